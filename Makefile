# Every target sets up its own virtual environment first: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IMAGES ?= out/sample_photos
OUT ?= out/features

.PHONY: setup demo test lint bench clean

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
	$(VENV)/bin/skimgfeat extract $(IMAGES) --output-dir $(OUT) --pattern "*.webp"

test: setup
	$(PY) -m ruff check skimgfeat tests benchmarks
	$(PY) -m pytest -n 2 --durations=15

bench: setup
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) out .pytest_cache
