"""SIGKILL at every step of ingest, remove, compaction and index add: the archive always opens, reruns converge.

Each writer passes named kill points (:mod:`skimgfeat.storage.kill_points`); with
``SKIMGFEAT_KILL_AT=N`` the real command-line process SIGKILLs itself at the Nth one
(no ``finally``, no exit handler runs). The test runs each command with N = 1, 2, ...
on the same folder until a run gets through: after every kill the archive must open and
answer, and the run that gets through must leave exactly the rows, vectors and files
of an uninterrupted run. Tiny photos and a random MobileNetV2 keep each run short.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from _launcher import run_cli
from PIL import Image

from skimgfeat import IndexDirectoryError, SimilarityIndex
from skimgfeat.archive import Archive
from skimgfeat.storage.io import write_table

pytest.importorskip("cv2", reason="local features need OpenCV (the match extra)")


def make_photos(folder, n: int, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = np.linspace(0, 255, 72 * 96 * 3).reshape(72, 96, 3) * (i + 1) / n
        pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"lot{i}_1.jpg", quality=90)
    return folder


def cli(*args, kill_at: int | None = None, trace=None):
    env = dict(os.environ)
    if kill_at is not None:
        env.update(SKIMGFEAT_KILL_AT=str(kill_at), SKIMGFEAT_KILL_TRACE=str(trace))
    return run_cli(*map(str, args), env=env, timeout=300)


def state(archive) -> tuple:
    """The live rows (identity, content digest), their vectors, and what is on disk beside the generations."""
    with Archive.open(archive) as opened:
        rows = opened.rows
        vectors = opened.vectors(rows["image_path"])
        hashes = sorted(opened.hashes.names) if opened.hashes is not None else []
        photos = sorted(path.relative_to(archive / "photos").as_posix()
                        for path in (archive / "photos").rglob("*") if path.is_file())
        answer = opened.similar([rows["image_path"][0]], k=2)["image_path"].tolist()
        return (list(zip(rows["image_path"], rows["content_sha256"])), np.round(vectors, 5).tolist(), hashes,
                photos, answer, len(opened.index.names))


def opens_and_answers(archive) -> None:
    """After a kill: the archive opens and answers from one generation (or none was ever made)."""
    try:
        opened = Archive.open(archive)
    except IndexDirectoryError as error:
        assert "holds no archive yet" in str(error), error  # killed before the first generation
        return
    with opened:
        if len(opened):
            assert len(opened.similar([opened.rows["image_path"][0]], k=1)) == min(1, len(opened) - 1)


def run_with_kills(arguments, check, trace) -> list[str]:
    """Run ``arguments`` killed at point 1, 2, ... until a run gets through; the points where runs died."""
    killed_at = []
    while True:
        trace.unlink(missing_ok=True)
        result = cli(*arguments, kill_at=len(killed_at) + 1, trace=trace)
        if result.returncode == 0:
            return killed_at
        assert result.returncode == -9, result.stderr  # SIGKILL, nothing else
        killed_at.append(trace.read_text().splitlines()[-1].split()[1])
        check()
        assert len(killed_at) < 30, "no run got through"


def test_a_kill_at_any_step_of_ingest_remove_and_compaction_converges_to_the_uninterrupted_run(tmp_path):
    day = make_photos(tmp_path / "day", 3, seed=0)
    reference, killed = tmp_path / "reference", tmp_path / "archive"
    steps = [
        ("ingest", lambda archive: ["ingest", day, "--archive", archive, "--intake", "d1", "--weights", "none", "-q"]),
        ("remove", lambda archive: ["remove", "--archive", archive, "lot1_1.jpg", "-q"]),
        ("compact", lambda archive: ["remove", "--archive", archive, "--compact", "-q"]),
    ]
    kills = {}
    for name, arguments in steps:
        done = cli(*arguments(reference))
        assert done.returncode == 0, done.stderr
        kills[name] = run_with_kills(arguments(killed), lambda: opens_and_answers(killed), tmp_path / "trace")
        assert state(killed) == state(reference), name
    switch = {"generation-staged", "generation-renamed", "current-written"}
    assert set(kills["ingest"]) == {"settings-written", "photo-copied", "embedded", "hashes-written",
                                    "local-features-written", *switch}  # the report: rewritten by the rerun
    assert set(kills["remove"]) == {"rows-marked", *switch}
    assert set(kills["compact"]) == {"rows-marked", "hashes-compacted", *switch}
    assert sum(map(len, kills.values())) >= 17
    report = pd.read_csv(killed / "reports" / "d1.csv", keep_default_na=False)
    assert sorted(report["image_path"].unique()) == ["d1/lot0_1.jpg", "d1/lot1_1.jpg", "d1/lot2_1.jpg"]
    again = cli(*steps[0][1](killed))  # the removed photo stays removed; nothing is added
    assert again.returncode == 0 and state(killed) == state(reference)


def test_a_kill_at_any_step_of_index_add_leaves_the_rows_of_before_or_after(tmp_path):
    rng = np.random.default_rng(0)
    columns = [f"img_feature_{i}" for i in range(8)]
    table = pd.DataFrame(rng.random((60, 8)).astype(np.float32), columns=columns)
    table.insert(0, "image_path", [f"a/{i}_1.jpg" for i in range(60)])
    more = pd.DataFrame(rng.random((20, 8)).astype(np.float32), columns=columns)
    more.insert(0, "image_path", [f"b/{i}_1.jpg" for i in range(20)])
    write_table(more, tmp_path / "more.parquet")
    SimilarityIndex.build(table).save(tmp_path / "index")

    def before_or_after():
        names = SimilarityIndex.load(tmp_path / "index").names.tolist()
        assert names in (table["image_path"].tolist(), table["image_path"].tolist() + more["image_path"].tolist())

    killed_at = run_with_kills(["index", "add", tmp_path / "index", tmp_path / "more.parquet"], before_or_after,
                               tmp_path / "trace")
    assert killed_at == ["generation-staged", "generation-renamed", "current-written"]
    index = SimilarityIndex.load(tmp_path / "index")
    assert index.names.tolist() == table["image_path"].tolist() + more["image_path"].tolist()
