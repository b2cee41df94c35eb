"""SIGKILL at every step of ingest, remove, compaction and index add: the archive always opens, reruns converge.

Each writer passes named kill points (:mod:`skimgfeat.storage.kill_points`); with
``SKIMGFEAT_KILL_AT=POINT`` the real command-line process SIGKILLs itself there (no
``finally``, no exit handler runs). The test runs each command killed at each of its
points in turn, on the same folder (23 kills in all), then once to the end: after every
kill the archive must open and answer (its instance index too), and the run that gets
through must leave exactly the rows, vectors, files, local features and instance index of
an uninterrupted run. Tiny photos and a random MobileNetV2 keep each run short.
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
from skimgfeat.matching.local_features import LocalFeatureStore
from skimgfeat.storage.io import write_table

pytest.importorskip("cv2", reason="local features need OpenCV (the match extra)")


def make_photos(folder, n: int, seed: int):
    """``n`` photos of random blocks (a hundred AKAZE keypoints each: enough for an instance index)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = np.linspace(0, 255, 144 * 192 * 3).reshape(144, 192, 3) * (i + 1) / n
        blocks = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((12, 12, 1)))
        pixels = np.clip((base + blocks) / 2 + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"lot{i}_1.jpg", quality=90)
    return folder


def cli(*args, kill_at: str | None = None):
    env = dict(os.environ)
    if kill_at is not None:
        env["SKIMGFEAT_KILL_AT"] = kill_at
    return run_cli(*map(str, args), env=env, timeout=300)


def state(archive) -> tuple:
    """The live rows (identity, content digest), their vectors, what is on disk beside the generations, and the
    photos of the local features and of the instance index the generation names."""
    with Archive.open(archive) as opened:
        rows = opened.rows
        vectors = opened.vectors(rows["image_path"])
        hashes = sorted(opened.hashes.names) if opened.hashes is not None else []
        photos = sorted(path.relative_to(archive / "photos").as_posix()
                        for path in (archive / "photos").rglob("*") if path.is_file())
        answer = opened.similar([rows["image_path"][0]], k=2)["image_path"].tolist()
        stored = sorted(LocalFeatureStore(archive / "local_features").paths())  # as a new reader lists them
        return (list(zip(rows["image_path"], rows["content_sha256"])), np.round(vectors, 5).tolist(), hashes,
                photos, answer, len(opened.index.names), stored, sorted(opened.instance_index.names()))


def opens_and_answers(archive) -> None:
    """After a kill: the archive opens and answers from one generation (or none was ever made)."""
    try:
        opened = Archive.open(archive)
    except IndexDirectoryError as error:
        assert "holds no archive yet" in str(error), error  # killed before the first generation
        return
    with opened:
        if len(opened):
            first = opened.rows["image_path"][0]
            assert len(opened.similar([first], k=1)) == min(1, len(opened) - 1)
            # The instance index its generation names: there, holding exactly its photos (whatever a killed writer
            # left in a newer one), and searched.
            assert sorted(opened.instance_index.names()) == sorted(opened.rows["image_path"])
            assert opened.instance_index.search(opened.local_features[first], k=1)[0] == [first]


def run_with_kills(arguments, check, points: list[str]) -> None:
    """Run ``arguments`` killed at each of ``points`` in turn (each run on what the killed ones left), then
    once more to the end."""
    for point in points:
        result = cli(*arguments, kill_at=point)
        assert result.returncode == -9, (point, result.stderr)  # SIGKILL at that point, nothing else
        check()
    result = cli(*arguments)
    assert result.returncode == 0, result.stderr


def test_a_kill_at_any_step_of_ingest_remove_and_compaction_converges_to_the_uninterrupted_run(tmp_path):
    day = make_photos(tmp_path / "day", 3, seed=0)
    reference, killed = tmp_path / "reference", tmp_path / "archive"
    # (A staging folder left by a kill, generation-staged, is cleaned up by the same code for every writer: the
    # intake's kill there stands for all.)
    switch = ["generation-renamed", "current-written"]
    instance = "instance-index-current-written"  # the instance index's new generation, the archive's not yet
    steps = [  # each command and its kill points, in the order a run passes them
        (["ingest", day, "--archive", "ARCHIVE", "--intake", "d1", "--weights", "none", "-q"],
         ["settings-written", "photo-copied", "embedded-part-written", "hashes-written", "local-features-written",
          instance, "generation-staged", *switch, "report-written"]),
        (["remove", "--archive", "ARCHIVE", "lot1_1.jpg", "-q"], ["rows-marked", instance, *switch]),
        # (current-written: switched, the old local-features parts not deleted yet)
        (["remove", "--archive", "ARCHIVE", "--compact", "-q"],
         ["rows-marked", "hashes-compacted", "local-features-rewritten", instance, *switch]),
    ]
    for arguments, points in steps:
        done = cli(*[reference if argument == "ARCHIVE" else argument for argument in arguments])
        assert done.returncode == 0, done.stderr
        run_with_kills([killed if argument == "ARCHIVE" else argument for argument in arguments],
                       lambda: opens_and_answers(killed), points)
        assert state(killed) == state(reference), arguments
    assert sum(len(points) for _, points in steps) == 20
    rows, *_, stored, instance_photos = state(killed)
    on_disk = [name for part in sorted((killed / "local_features").glob("part-*.npz"))
               for name in np.load(part)["image_path"].tolist()]
    # The removed photo is out of the local features (their files too) and out of the instance index.
    assert [name for name, _ in rows] == stored == instance_photos == sorted(on_disk) == ["d1/lot0_1.jpg",
                                                                                        "d1/lot2_1.jpg"]
    report = pd.read_csv(killed / "reports" / "d1.csv", keep_default_na=False)
    assert sorted(report["image_path"].unique()) == ["d1/lot0_1.jpg", "d1/lot1_1.jpg", "d1/lot2_1.jpg"]


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

    run_with_kills(["index", "add", tmp_path / "index", tmp_path / "more.parquet"], before_or_after,
                   ["generation-staged", "generation-renamed", "current-written"])
    index = SimilarityIndex.load(tmp_path / "index")
    assert index.names.tolist() == table["image_path"].tolist() + more["image_path"].tolist()
