"""Readers of an archive while an intake writes to it: never broken, every answer from one generation."""

from __future__ import annotations

import numpy as np
from _launcher import run_cli, start_cli, start_forked_python
from PIL import Image

# Each reader holds the archive it opened first for the whole run (as serve does) and opens the live one again
# and again: the rows, the vectors and a search of each opened archive must agree with each other.
READER = r"""
import os, sys, time
from skimgfeat.archive import Archive
folder, stop_file = sys.argv[1], sys.argv[2]

def read_until_stopped():
    held = Archive.open(folder)
    sizes = set()
    while True:
        stopping = os.path.exists(stop_file)  # one more pass after it appears: the live archive of after
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
        if stopping:
            return " ".join(map(str, sorted(sizes))), len(held)
        time.sleep(0.2)

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
    readers = start_forked_python(READER, "read_until_stopped", 4, archive, stop)
    second = start_cli("ingest", make_photos(tmp_path / "d2", 4, seed=2), "--archive", archive, "--intake", "d2",
                       "--no-local-features", "-q")
    assert second.wait(300) == 0, second.output()[1]
    stop.touch()
    assert readers.wait(120) == 0, readers.output()[1]
    lines = readers.output()[0].split("\n")[:-1]
    assert len(lines) == 4, readers.output()
    for line in lines:
        sizes, held = line.rsplit(" ", 1)
        # Each reader saw the archive of before (6 rows), then that of after (10), nothing in between; the
        # archive it held first still answered with its 6 rows after the switch.
        assert sizes == "6 10" and held == "6"
