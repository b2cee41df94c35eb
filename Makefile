# Every target sets up its own virtual environment first: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IMAGES ?= out/sample_photos
OUT ?= out/features

.PHONY: setup demo test lint bench docs clean

setup: $(VENV)/.installed

# constraints.txt pins torch/torchvision to what CI tests; setup.cfg itself only declares ranges.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

## The main job: a folder of photos in, Parquet feature tables out.
## Offline, point SKIMGFEAT_WEIGHTS at a local state-dict file (e.g. ../shared/weights/...).
demo: setup
	$(VENV)/bin/skimgfeat sample-images $(IMAGES)
	$(VENV)/bin/skimgfeat extract $(IMAGES) --output-dir $(OUT) --pattern "*.webp" --overwrite   # a second make demo writes the same tables again

# Two xdist workers, one core each: left alone, each worker's torch, ONNX Runtime and decode
# pools would size themselves to every core and the workers' threads would fight over two cores.
test: setup
	$(PY) -m ruff check skimgfeat tests benchmarks examples
	OMP_NUM_THREADS=1 SKIMGFEAT_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal --durations=15

bench: setup
	$(PY) benchmarks/throughput.py

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $@

## The documentation site, warnings as errors, in docs/_build/html (index.html is the guide).
## It runs every examples/plot_*.py on the full data; SKIMGFEAT_EXAMPLE_SUBSET=1 for a quick subset.
docs: $(VENV)/.installed-docs
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) out .pytest_cache docs/_build docs/generated docs/auto_examples
