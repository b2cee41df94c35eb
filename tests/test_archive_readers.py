"""Readers of an archive while an intake writes to it: never broken, every answer from one generation."""

from __future__ import annotations

import numpy as np
from _launcher import run_cli, start_cli, start_python
from PIL import Image

# Each reader holds the archive it opened first for the whole run (as serve does) and opens the live one
# again and again: the rows, the vectors and a search of each opened archive must agree with each other.
READER = r"""
import os, sys, time
from skimgfeat.archive import Archive
folder, stop_file = sys.argv[1], sys.argv[2]
held = Archive.open(folder)
sizes = set()
while True:
    for archive in (held, Archive.open(folder)):
        rows = archive.rows
        assert len(rows) == len(archive), (len(rows), len(archive))
        vectors = archive.vectors(rows["image_path"])
        found = archive.search(vectors[:3], k=len(rows))
        assert set(found["image_path"]) <= set(rows["image_path"]), "a row of another generation"
        assert (found.groupby("query")["distance"].min() < 1e-3).all(), "a row's own vector is not found"
        sizes.add(len(rows))
        if archive is not held:
            archive.close()
    if os.path.exists(stop_file):
        break
    time.sleep(0.3)  # two cores for four readers and a writer: the writer must get its share
print(" ".join(map(str, sorted(sizes))), len(held))
"""


def make_photos(folder, n: int, seed: int):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"lot{i}_1.jpg")
    return folder


def test_four_readers_searching_while_an_intake_runs_are_never_broken(tmp_path):
    archive, stop = tmp_path / "archive", tmp_path / "stop"
    first = run_cli("ingest", make_photos(tmp_path / "d1", 6, seed=1), "--archive", archive, "--intake", "d1",
                    "--weights", "none", "--no-local-features", "-q", timeout=300)
    assert first.returncode == 0, first.stderr
    readers = [start_python(READER, archive, stop) for _ in range(4)]
    second = start_cli("ingest", make_photos(tmp_path / "d2", 4, seed=2), "--archive", archive, "--intake", "d2",
                       "-q")
    assert second.wait(300) == 0, second.output()[1]
    stop.touch()
    for reader in readers:
        assert reader.wait(120) == 0, reader.output()[1]
        sizes, held = reader.output()[0].split("\n")[-2].rsplit(" ", 1)
        # Each reader saw the archive of before (6 rows) and, once the intake switched, that of after (10).
        assert set(map(int, sizes.split())) <= {6, 10} and held == "6"
