"""Every `skimgfeat` command shown in README.md and docs/*.md runs, in order, as a reader would type it.

The shell blocks of each page are read from the page itself, so a page cannot drift from the
command line again: a renamed option, a changed default pattern or an output folder a later
command cannot reuse fails here. Each page runs in a folder of its own laid out like the one
the docs describe: ``photos/`` with real photos named as lots (``84512_1.jpg``), a day's new
photos in ``today/``, single new photos beside them (``new_listing.jpg``, ``new_photo.jpg``,
...) and a lot table ``lots.csv``. The photos are small real JPEGs, so a page costs seconds.
Lines that install, build or benchmark (``make``, ``pip``, ``python``) are not commands of
the product and are left out; ``export NAME=VALUE`` lines set the environment of the
commands after them. ``skimgfeat serve`` starts a real server (on a free port instead of
8000) and the page's ``curl`` lines after it are sent to it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from _launcher import run_cli, start_cli, wait_until
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|console|sh|shell)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHARED_WEIGHTS = "../shared/weights/mobilenet_v2-imagenet1k-dequantized.pth"


def shell_commands(page: Path) -> list[str]:
    """The commands of a page's shell blocks: continued and quoted lines joined, comments dropped."""
    commands = []
    for block in SHELL_BLOCK.findall(page.read_text(encoding="utf-8")):
        pending = ""  # a command whose quoted argument goes on over the next line
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:
                continue
            if words and words[0] in ("skimgfeat", "export", "curl"):
                commands.append(pending.strip())
            pending = ""
    return commands


PAGES_WITH_COMMANDS = [page for page in PAGES if any(w.startswith("skimgfeat") for w in shell_commands(page))]


def _photo(source: Path, target: Path, size: int = 160) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").resize((size, size)).save(target, format="JPEG", quality=90)


@pytest.fixture(scope="module")
def sources(shared_dir) -> dict[str, Path]:
    """Real photos to lay out: shop photos for lots, DVD cases for the same-object pages."""
    grocery = sorted((shared_dir / "images" / "grocery" / "train").rglob("*.jpg"))[::97]
    objects = shared_dir / "images" / "objects"
    return {
        "84512_1.jpg": grocery[0], "84512_2.jpg": grocery[1], "84513_1.jpg": grocery[2],
        "84514_1.jpg": grocery[3], "dvd007_reference.jpg": objects / "dvd007_reference.jpg",
        "dvd007_palm.jpg": objects / "dvd007_palm.jpg", "dvd008_reference.jpg": objects / "dvd008_reference.jpg",
        # single new photos, as the pages name them
        "new_listing.jpg": grocery[4], "new_photo.jpg": objects / "dvd007_canon.jpg",
        "new1.jpg": grocery[0], "new2.jpg": grocery[5],
        # a day's intake: a copy of a lot and a new one
        "today/90001_1.jpg": grocery[1], "today/90002_1.jpg": grocery[6],
    }


def lay_out(folder: Path, sources: dict[str, Path]) -> None:
    for name, source in sources.items():
        _photo(source, folder / (name if "/" in name or name.startswith("new") else f"photos/{name}"))
    items = sorted({name.split("/")[-1].rsplit("_", 1)[0] for name in sources if not name.startswith("new")})
    rows = [f"{item},{100 + 10 * number},2026-1{number % 2},lot {item}" for number, item in enumerate(items)]
    (folder / "lots.csv").write_text("item_id,price,sale,title\n" + "\n".join(rows) + "\n")


def run_page(page: Path, folder: Path, shared_weights: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "SKIMGFEAT_WEIGHTS"}
    env["SKIMGFEAT_WEIGHTS"] = str(shared_weights)  # offline: the docs' own export line says the same
    server, address = None, None
    try:
        for line in shell_commands(page):
            words = shlex.split(line, comments=True)
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = str(shared_weights) if value == SHARED_WEIGHTS else value
            elif words[0] == "curl":
                assert address is not None, f"{page.name}: `{line.strip()}` comes before any `skimgfeat serve`"
                run_curl(page, line, words, address, folder)
            elif words[1] == "serve":
                server, address = start_server(words, env, folder)
            else:
                result = run_cli(*words[1:], env=env, cwd=folder, timeout=300)
                assert result.returncode == 0, (
                    f"{page.name}: `{line.strip()}` exited {result.returncode}\n{result.stderr[-2000:]}"
                )
    finally:
        if server is not None:
            server.kill()
            server.wait()


def start_server(words: list[str], env: dict, folder: Path):
    """``skimgfeat serve ...`` as the page writes it, on a free port; the process and its address."""
    server = start_cli(*words[1:], "--port", "0", env=env, cwd=folder)
    wait_until(lambda: "serving" in server.output()[1], server, timeout=300)
    return server, re.search(r"http://127\.0\.0\.1:\d+", server.output()[1]).group(0)


def run_curl(page: Path, line: str, words: list[str], address: str, folder: Path) -> None:
    """A page's ``curl`` line, sent by curl itself to the page's server; it must answer 2xx."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    words = [word.replace("http://127.0.0.1:8000", address) for word in words]
    result = subprocess.run([*words, "--fail-with-body"], cwd=folder, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{page.name}: `{line.strip()}` failed ({result.returncode}): {result.stdout[-500:]}"


def write_partitioned_parts(folder: Path, shared_weights: Path) -> None:
    """index.md's Python step before its shell block: the photos as a partitioned dataset in features/."""
    dd = pytest.importorskip("dask.dataframe")
    import dask
    import pandas as pd

    from skimgfeat import CNNImageEmbedder
    from skimgfeat.distributed import write_partitioned_features

    photos = sorted(str(path) for path in (folder / "photos").glob("*.jpg"))
    embedder = CNNImageEmbedder(weights=str(shared_weights), on_error="nan").fit()
    with dask.config.set(scheduler="synchronous"):
        write_partitioned_features(dd.from_pandas(pd.Series(photos), npartitions=2), embedder,
                                   folder / "features", image_dir=folder / "photos")


# What a page does in Python before its shell commands, done here as the page shows it.
PYTHON_STEPS = {"index.md": write_partitioned_parts}


@pytest.mark.shared
@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=[page.name for page in PAGES_WITH_COMMANDS])
def test_every_command_of_the_page_runs(page, tmp_path, sources, shared_weights):
    lay_out(tmp_path, sources)
    if page.name in PYTHON_STEPS:
        PYTHON_STEPS[page.name](tmp_path, shared_weights)
    run_page(page, tmp_path, shared_weights)


def test_the_pages_show_commands():
    """The reader below is not vacuous: the pages that document the command line do show commands."""
    names = {page.name for page in PAGES_WITH_COMMANDS}
    assert {"cli.md", "similarity.md", "object-matching.md", "millions-of-photos.md"} <= names
