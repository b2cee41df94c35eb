"""Every gallery example runs as a script, on a small subset of the shared data, and draws its figures."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from _launcher import run_python
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))

# Runs the example as ``python example.py`` would (runpy: its own __main__, __file__), then
# saves every figure it left open, as sphinx-gallery would scrape them.
RUN_AND_SAVE_FIGURES = textwrap.dedent(
    """
    import runpy, sys
    import matplotlib.pyplot as plt
    example, out = sys.argv[1], sys.argv[2]
    runpy.run_path(example, run_name="__main__")
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"{out}/figure_{number}.png", dpi=40)
    """
)


def test_the_gallery_has_examples():
    assert EXAMPLES, "examples/plot_*.py not found"


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs_and_draws_its_figures(example: Path, shared_dir: Path, tmp_path):
    env = {
        **os.environ,
        "SKIMGFEAT_EXAMPLE_SUBSET": "1",
        "SKIMGFEAT_SHARED": str(shared_dir),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    figures = tmp_path / "figures"
    figures.mkdir()
    done = run_python(RUN_AND_SAVE_FIGURES, example, figures, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    drawn = sorted(figures.glob("*.png"))
    assert drawn, f"{example.name} drew no figure"
    for png in drawn:
        with Image.open(png) as image:
            darkest, brightest = image.convert("L").getextrema()
            assert min(image.size) > 50 and brightest > darkest, f"{png.name} is blank"
