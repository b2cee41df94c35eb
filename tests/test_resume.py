"""Interrupted runs: checkpoints, `--resume` after a SIGKILL, and atomic final files."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skimgfeat.storage.checkpoint import CHECKPOINT_DIR, Checkpoint, CheckpointError, FileStamp, Rows, pending
from skimgfeat.storage.io import atomic_path

N_PHOTOS = 80


def command(image_dir: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "skimgfeat", "extract", str(image_dir), "-o", str(output),
            "--weights", "none", "--batch-size", "4", "--workers", "1", *extra]


def run(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(arguments, capture_output=True, text=True, timeout=600, check=False)


def resumed_count(stdout: str) -> int:
    return int(re.search(r"resumed: +(\d+) images from the checkpoint", stdout).group(1))


def embedding_seconds(stdout: str) -> float:
    return float(re.search(r"images embedded in ([\d.]+) s", stdout).group(1))


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> Path:
    """80 small noisy WebP photos of 20 items, in a folder with a space and non-ASCII characters."""
    folder = tmp_path_factory.mktemp("resume") / "lots of phötos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(N_PHOTOS):
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"lot{i // 4:02d}_{i % 4 + 1}.webp", quality=80)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(many_photos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    output = tmp_path_factory.mktemp("reference")
    result = run(command(many_photos, output, "--resume"))  # with no checkpoint to resume: a plain run
    assert result.returncode == 0, result.stderr
    assert resumed_count(result.stdout) == 0
    return output, result


def kill_after_checkpoint_parts(arguments: list[str], output: Path, n_parts: int) -> None:
    """Start the CLI, SIGKILL it once ``n_parts`` checkpoint parts are on disk."""
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while len(list((output / CHECKPOINT_DIR).glob("part-*.npz"))) < n_parts:
            assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint part appeared"
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_tables_of_an_uninterrupted_run(many_photos, uninterrupted, tmp_path):
    reference, full_run = uninterrupted
    kill_after_checkpoint_parts(command(many_photos, tmp_path), tmp_path, n_parts=10)
    # Nothing under a final name: the tables are only written, atomically, at the end.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("image_features")]
    # What a kill during the final write would leave: cleaned up by the next run.
    (tmp_path / ".image_features_raw.parquet.123-0a1b2c3d.tmp").write_bytes(b"PAR1 half")

    result = run(command(many_photos, tmp_path, "--resume"))
    assert result.returncode == 0, result.stderr

    assert 40 <= resumed_count(result.stdout) < N_PHOTOS  # the 10 parts of 4 images on disk were skipped
    # The network's preparation costs both runs the same; the embedding is where resuming saves.
    assert embedding_seconds(result.stdout) < embedding_seconds(full_run.stdout)
    for name in ("image_features_raw.parquet", "image_features_by_item.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(reference / name))
    assert not (tmp_path / CHECKPOINT_DIR).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_ctrl_c_checkpoints_what_was_embedded_and_exits_130(many_photos, tmp_path):
    # Background processes may inherit an ignored SIGINT; the CLI must see the default one, as in a terminal.
    process = subprocess.Popen(command(many_photos, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parts = tmp_path / CHECKPOINT_DIR
    deadline = time.monotonic() + 300
    while len(list(parts.glob("part-*.npz"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert process.returncode == 130
    assert stderr == "skimgfeat: error: interrupted; the work done so far is checkpointed, continue with --resume\n"
    assert len(list(parts.glob("part-*.npz"))) >= 2


def test_an_existing_checkpoint_needs_resume_or_restart(many_photos, tmp_path):
    old = Checkpoint.open(tmp_path, {"model_name": "resnet50"}, resume=False, restart=False)
    old.write_part(Rows(["lot00_1.webp"], [FileStamp(1, 1)], [""], [""], np.zeros((1, 2048), np.float32)))
    arguments = command(many_photos, tmp_path, "--max-images", "4")

    forgot = run(arguments)
    assert forgot.returncode == 2
    assert "holds the checkpoint of an interrupted run; pass --resume to continue it or --restart" in forgot.stderr

    mismatch = run([*arguments, "--resume"])
    assert mismatch.returncode == 2
    assert "cannot resume: the checkpoint was made with other settings (" in mismatch.stderr
    assert "model_name: 'resnet50' then, 'mobilenet_v2' now" in mismatch.stderr

    fresh = run([*arguments, "--restart", "--quiet"])
    assert fresh.returncode == 0, fresh.stderr
    assert len(pd.read_parquet(tmp_path / "image_features_raw.parquet")) == 4


# -- the checkpoint itself -------------------------------------------------------------


def rows(paths: list[str], value: float) -> Rows:
    stamps = [FileStamp(10, 20)] * len(paths)
    return Rows(paths, stamps, [""] * len(paths), [""] * len(paths), np.full((len(paths), 3), value, np.float32))


def test_parts_accumulate_and_a_later_row_of_the_same_path_wins(tmp_path):
    checkpoint = Checkpoint.open(tmp_path, {"a": 1}, resume=False, restart=False)
    checkpoint.write_part(rows(["x.webp", "y.webp"], 1.0))
    checkpoint.write_part(rows(["y.webp"], 2.0))
    reopened = Checkpoint.open(tmp_path, {"a": 1}, resume=True, restart=False)
    done = reopened.load(n_features=3)
    assert sorted(done) == ["x.webp", "y.webp"]
    assert done["y.webp"][3].tolist() == [2.0, 2.0, 2.0]
    reopened.write_part(rows(["z.webp"], 3.0))
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == [
        "manifest.json", "part-000000.npz", "part-000001.npz", "part-000002.npz",
    ]


def test_a_file_changed_since_its_checkpoint_is_embedded_again(tmp_path):
    checkpoint = Checkpoint.open(tmp_path, {}, resume=False, restart=False)
    checkpoint.write_part(rows(["same.webp", "changed.webp"], 1.0))
    done = checkpoint.load(n_features=3)
    stamps = [FileStamp(10, 20), FileStamp(10, 21), FileStamp(5, 5)]
    assert pending(["same.webp", "changed.webp", "new.webp"], stamps, done) == [1, 2]


def test_a_checkpoint_of_another_width_is_refused(tmp_path):
    Checkpoint.open(tmp_path, {}, resume=False, restart=False).write_part(rows(["x.webp"], 1.0))
    with pytest.raises(CheckpointError, match="another width"):
        Checkpoint.open(tmp_path, {}, resume=True, restart=False).load(n_features=1280)


def test_an_interrupted_write_leaves_the_final_file_as_it_was(tmp_path):
    final = tmp_path / "table.parquet"
    final.write_text("previous complete table")
    with pytest.raises(RuntimeError), atomic_path(final) as temporary:
        temporary.write_text("half a tab")
        raise RuntimeError("killed")
    assert final.read_text() == "previous complete table"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_a_lost_manifest_is_rebuilt_from_the_parts_which_are_kept(tmp_path):
    checkpoint = Checkpoint.open(tmp_path, {"model": "a"}, resume=False, restart=False)
    checkpoint.write_part(rows(["x.webp", "y.webp"], 1.0))
    folder = tmp_path / CHECKPOINT_DIR
    (folder / "manifest.json").unlink()  # lost: a crash, a careless clean-up

    with pytest.raises(CheckpointError, match="--resume"):  # still an interrupted run: not silently restarted
        Checkpoint.open(tmp_path, {"model": "a"}, resume=False, restart=False)
    with pytest.raises(CheckpointError, match="model: 'a' then, 'b' now"):
        Checkpoint.open(tmp_path, {"model": "b"}, resume=True, restart=False)
    assert (folder / "part-000000.npz").is_file()  # refusing never deletes

    resumed = Checkpoint.open(tmp_path, {"model": "a"}, resume=True, restart=False)
    assert sorted(resumed.load(n_features=3)) == ["x.webp", "y.webp"]
    assert (folder / "manifest.json").is_file()
    resumed.write_part(rows(["z.webp"], 2.0))
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "part-000000.npz", "part-000001.npz"]


def test_failed_rows_are_tried_again_on_resume(tmp_path):
    checkpoint = Checkpoint.open(tmp_path, {}, resume=False, restart=False)
    failed = rows(["ok.webp", "broken.webp"], 1.0)
    failed.reasons[1], failed.details[1] = "truncated", "file ends early"
    checkpoint.write_part(failed)
    stamps = [FileStamp(10, 20), FileStamp(10, 20)]
    assert pending(["ok.webp", "broken.webp"], stamps, checkpoint.load(n_features=3)) == [1]


def test_a_file_deleted_after_listing_gets_a_stamp_and_fails_as_missing(tmp_path):
    assert FileStamp.of(tmp_path / "gone.webp") == FileStamp(-1, -1)
