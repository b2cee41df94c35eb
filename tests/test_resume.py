"""Interrupted runs: checkpoints, `--resume` after a SIGKILL, and atomic final files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _launcher import run_cli, start_cli, wait_until
from PIL import Image

from skimgfeat.cli import build_parser
from skimgfeat.cli.quality import QUALITY_CHECKPOINT_DIR
from skimgfeat.storage.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    CheckpointError,
    Rows,
    file_stamps,
    lock_output_folder,
    pending,
)
from skimgfeat.storage.io import atomic_path

N_PHOTOS = 80


def command(image_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["extract", str(image_dir), "-o", str(output),
            "--weights", "none", "--batch-size", "4", "--workers", "1", *extra]


def run(arguments: list[str]) -> subprocess.CompletedProcess:
    return run_cli(*arguments)


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


def kill_after_checkpoint_parts(arguments: list[str], output: Path, n_parts: int, folder: str = CHECKPOINT_DIR) -> None:
    """Start the CLI, SIGKILL it once ``n_parts`` checkpoint parts are on disk."""
    process = start_cli(*arguments)
    try:
        wait_until(lambda: len(list((output / folder).glob("part-*.npz"))) >= n_parts, process)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_tables_of_an_uninterrupted_run(many_photos, uninterrupted, tmp_path):
    reference, full_run = uninterrupted
    kill_after_checkpoint_parts(command(many_photos, tmp_path, "--checkpoint-every", "8", "--checkpoint-seconds",
                                        "600"), tmp_path, n_parts=5)
    parts = sorted((tmp_path / CHECKPOINT_DIR).glob("part-*.npz"))
    # A part holds --checkpoint-every rows (two batches of 4), not one batch.
    assert len(parts) >= 5 and [len(np.load(part)["image_path"]) for part in parts] == [8] * len(parts)
    # Nothing under a final name: the tables are only written, atomically, at the end.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("image_features")]
    # What a kill during the final write would leave: cleaned up by the next run.
    (tmp_path / ".image_features_raw.parquet.123-0a1b2c3d.tmp").write_bytes(b"PAR1 half")

    result = run(command(many_photos, tmp_path, "--resume"))
    assert result.returncode == 0, result.stderr

    assert resumed_count(result.stdout) == 8 * len(parts) < N_PHOTOS  # the rows of the parts on disk were skipped
    # The network's preparation costs both runs the same; the embedding is where resuming saves.
    assert embedding_seconds(result.stdout) < embedding_seconds(full_run.stdout)
    for name in ("image_features_raw.parquet", "image_features_by_item.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(reference / name))
    assert not (tmp_path / CHECKPOINT_DIR).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_ctrl_c_checkpoints_what_was_embedded_and_exits_130(many_photos, tmp_path):
    process = start_cli(*command(many_photos, tmp_path, "--checkpoint-every", "4"))
    parts = tmp_path / CHECKPOINT_DIR
    deadline = time.monotonic() + 300
    while len(list(parts.glob("part-*.npz"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    stderr = process.completed().stderr
    if process.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert process.returncode == 130
    assert stderr == "skimgfeat: error: interrupted; the work done so far is checkpointed, continue with --resume\n"
    assert len(list(parts.glob("part-*.npz"))) >= 2


def test_an_existing_checkpoint_needs_resume_or_restart(many_photos, tmp_path):
    old = Checkpoint.open(tmp_path, {"model_name": "resnet50"}, resume=False, restart=False)
    old.write_part(Rows(["lot00_1.webp"], ["stamp"], [""], [""], np.zeros((1, 2048), np.float32)))
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
    stamps = ["stamp-a"] * len(paths)
    return Rows(paths, stamps, [""] * len(paths), [""] * len(paths), np.full((len(paths), 3), value, np.float32))


def test_parts_accumulate_and_a_later_row_of_the_same_path_wins(tmp_path):
    checkpoint = Checkpoint.open(tmp_path, {"a": 1}, resume=False, restart=False)
    checkpoint.write_part(rows(["x.webp", "y.webp"], 1.0))
    checkpoint.write_part(rows(["y.webp"], 2.0))
    reopened = Checkpoint.open(tmp_path, {"a": 1}, resume=True, restart=False)
    assert sorted(reopened.done()) == ["x.webp", "y.webp"]
    with reopened.gather(["y.webp", "x.webp"], n_features=3) as gathered:
        assert gathered.read([0, 1]).tolist() == [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]
    reopened.write_part(rows(["z.webp"], 3.0))
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == [
        "manifest.json", "part-000000.npz", "part-000001.npz", "part-000002.npz",
    ]


def test_a_file_changed_since_its_checkpoint_is_embedded_again(tmp_path):
    checkpoint = Checkpoint.open(tmp_path, {}, resume=False, restart=False)
    checkpoint.write_part(rows(["same.webp", "changed.webp"], 1.0))
    stamps = ["stamp-a", "stamp-b", "stamp-a", ""]
    assert pending(["same.webp", "changed.webp", "new.webp", "vanished.webp"], stamps, checkpoint.done()) == [1, 2, 3]


def test_a_checkpoint_of_another_width_is_refused(tmp_path):
    Checkpoint.open(tmp_path, {}, resume=False, restart=False).write_part(rows(["x.webp"], 1.0))
    with pytest.raises(CheckpointError, match="another width"):
        Checkpoint.open(tmp_path, {}, resume=True, restart=False).gather(["x.webp"], n_features=1280)


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
    assert sorted(resumed.done()) == ["x.webp", "y.webp"]
    assert (folder / "manifest.json").is_file()
    resumed.write_part(rows(["z.webp"], 2.0))
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "part-000000.npz", "part-000001.npz"]


def test_failed_rows_are_tried_again_on_resume(tmp_path):
    checkpoint = Checkpoint.open(tmp_path, {}, resume=False, restart=False)
    failed = rows(["ok.webp", "broken.webp"], 1.0)
    failed.reasons[1], failed.details[1] = "truncated", "file ends early"
    checkpoint.write_part(failed)
    assert pending(["ok.webp", "broken.webp"], ["stamp-a", "stamp-a"], checkpoint.done()) == [1]


def test_a_file_deleted_after_listing_has_no_stamp_and_is_computed_again(tmp_path):
    assert file_stamps([tmp_path / "gone.webp"]) == [""]


def test_the_final_tables_read_each_part_once(tmp_path, monkeypatch):
    checkpoint = Checkpoint.open(tmp_path, {}, resume=False, restart=False)
    names = [f"{i:03d}_1.webp" for i in range(30)]
    for start in range(0, 30, 6):  # written in reverse order of the listing, as a resume can leave them
        chunk = names[::-1][start : start + 6]
        checkpoint.write_part(Rows(chunk, ["s"] * 6, [""] * 6, [""] * 6, np.array([[float(n[:3])] * 2 for n in chunk])))
    loaded = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, **kwargs: loaded.append(path) or real_load(path, **kwargs))
    with checkpoint.gather(names, n_features=2) as gathered:
        assert gathered.read(range(30))[:, 0].tolist() == list(range(30))
        assert gathered.read([29, 3, 4])[:, 1].tolist() == [29, 3, 4]
    assert sorted(loaded) == checkpoint.part_files()


# -- a file replaced since its row was checkpointed, two runs at once, an old checkpoint ----


@pytest.fixture(scope="module")
def same_size_photos(tmp_path_factory) -> Path:
    """120 BMP photos of one size (so a different photo can have the same size in bytes), and a spare."""
    folder = tmp_path_factory.mktemp("bmp")
    rng = np.random.default_rng(3)
    for i in range(121):
        name = "spare.bmp.keep" if i == 120 else f"lot{i // 4:02d}_{i % 4 + 1}.bmp"
        Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(folder / name, format="BMP")
    return folder


def test_a_photo_replaced_with_cp_p_is_embedded_again_on_resume(same_size_photos, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(same_size_photos, photos)
    arguments = command(photos, tmp_path / "out", "--pattern", "*.bmp", "--checkpoint-every", "4")
    kill_after_checkpoint_parts(arguments, tmp_path / "out", n_parts=2)
    first = photos / "lot00_1.bmp"
    before = os.stat(first)
    # A corrected photo of the same size in bytes, copied over with its times kept, as `cp -p` or `rsync -t` do.
    spare = photos / "spare.bmp.keep"
    os.utime(spare, ns=(before.st_atime_ns, before.st_mtime_ns))
    subprocess.run(["cp", "-p", str(spare), str(first)], check=True)
    assert (os.stat(first).st_size, os.stat(first).st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    result = run([*arguments, "--resume"])
    assert result.returncode == 0, result.stderr
    reference = run(command(photos, tmp_path / "reference", "--pattern", "*.bmp", "--quiet"))
    assert reference.returncode == 0, reference.stderr
    resumed = pd.read_parquet(tmp_path / "out" / "image_features_raw.parquet")
    fresh = pd.read_parquet(tmp_path / "reference" / "image_features_raw.parquet")
    pd.testing.assert_frame_equal(resumed, fresh)  # the replaced photo's row is the new photo's


def test_a_second_run_into_a_busy_output_folder_exits_2_naming_it(many_photos, tmp_path):
    output = tmp_path / "out"
    with lock_output_folder(output):  # what a running extract or quality holds
        for make_command in (command, quality_command):
            result = run(make_command(many_photos, output, "--resume", "--max-images", "4"))
            assert result.returncode == 2, result.stderr
            assert f"output folder {str(output)!r} is in use by another skimgfeat run" in result.stderr
    assert not (output / CHECKPOINT_DIR).exists()  # the refused run wrote nothing
    after = run(command(many_photos, output, "--max-images", "4", "--quiet"))  # the lock died with its holder
    assert after.returncode == 0, after.stderr


def test_a_checkpoint_of_the_previous_format_is_refused_with_what_to_do(many_photos, tmp_path):
    folder = tmp_path / CHECKPOINT_DIR
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format_version": 2, "fingerprint": {}}))
    result = run(command(many_photos, tmp_path, "--resume", "--max-images", "4"))
    assert result.returncode == 2
    assert "was written by another version of skimgfeat (checkpoint format 2, this version reads 3)" in result.stderr
    assert "pass --restart to discard it" in result.stderr


# -- quality: the same checkpointed loop ---------------------------------------------------


def quality_command(image_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["quality", str(image_dir), "-o", str(output), "--workers", "1", *extra]


@pytest.fixture(scope="module")
def larger_photos(tmp_path_factory) -> Path:
    """300 noisy 256 px WebP photos: measuring them takes long enough to be interrupted."""
    folder = tmp_path_factory.mktemp("quality")
    rng = np.random.default_rng(5)
    for i in range(300):
        pixels = rng.integers(0, 256, size=(192, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"q{i // 3:03d}_{i % 3 + 1}.webp", quality=70)
    return folder


def measured_counts(stdout: str) -> tuple[int, int]:
    found = re.search(r"(\d+) measured in [\d.]+ s \([\d.]+ images/s\), (\d+) resumed from the checkpoint", stdout)
    return int(found.group(1)), int(found.group(2))


def test_a_killed_quality_run_resumes_without_measuring_done_photos_again(larger_photos, tmp_path):
    kill_after_checkpoint_parts(quality_command(larger_photos, tmp_path / "out", "--checkpoint-every", "8"),
                                tmp_path / "out", n_parts=2, folder=QUALITY_CHECKPOINT_DIR)
    parts = sorted((tmp_path / "out" / QUALITY_CHECKPOINT_DIR).glob("part-*.npz"))
    done = sum(len(np.load(part)["image_path"]) for part in parts)
    assert done >= 16

    result = run(quality_command(larger_photos, tmp_path / "out", "--checkpoint-every", "8", "--resume"))
    assert result.returncode == 0, result.stderr
    assert measured_counts(result.stdout) == (300 - done, done)
    reference = run(quality_command(larger_photos, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    assert measured_counts(reference.stdout) == (300, 0)
    for name in ("image_quality_raw.parquet", "image_quality_by_item.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / name),
                                      pd.read_parquet(tmp_path / "reference" / name))
    assert not (tmp_path / "out" / QUALITY_CHECKPOINT_DIR).exists()


def test_ctrl_c_suggests_resume_only_to_the_commands_that_have_it():
    parser = build_parser()
    for arguments in (["extract", "d", "-o", "o"], ["quality", "d", "-o", "o"], ["similar", "q", "--features", "f"],
                      ["duplicates", "--features", "f"]):
        args = parser.parse_args(arguments)
        message = getattr(args, "on_interrupt", "interrupted")
        assert ("--resume" in message) == hasattr(args, "resume"), arguments


def test_checkpoints_come_by_time_too_so_a_slow_run_killed_loses_little(many_photos, tmp_path):
    """4,096 rows a part would be 80 s of work at 50 photos/s: a part also comes every --checkpoint-seconds."""
    arguments = command(many_photos, tmp_path, "--checkpoint-every", "100000", "--checkpoint-seconds", "0.01")
    kill_after_checkpoint_parts(arguments, tmp_path, n_parts=2)
    parts = sorted((tmp_path / CHECKPOINT_DIR).glob("part-*.npz"))
    saved = sum(len(np.load(part)["image_path"]) for part in parts)
    assert len(parts) >= 2 and 0 < saved < N_PHOTOS  # far fewer rows than --checkpoint-every, kept by the clock


def test_extract_into_a_folder_holding_another_runs_tables_is_refused_not_silently_replaced(many_photos, tmp_path):
    """Day two: 20 new photos into day one's OUT replaced a 300-row table and its hashes by 20 rows."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, names in ((first, ["lot00_1.webp", "lot00_2.webp", "lot01_1.webp"]), (second, ["lot02_1.webp"])):
        folder.mkdir()
        for name in names:
            shutil.copy(many_photos / name, folder / name)
    assert run(command(first, tmp_path / "out", "--hashes")).returncode == 0
    refused = run(command(second, tmp_path / "out", "--hashes"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds the tables of an earlier run with 3 photos" in refused.stderr and "--overwrite" in refused.stderr
    assert len(pd.read_parquet(tmp_path / "out" / "image_features_raw.parquet")) == 3  # untouched
    assert run(command(first, tmp_path / "out")).returncode == 0  # the same photos again: replaced, as before
    replaced = run(command(second, tmp_path / "out", "--overwrite"))
    assert replaced.returncode == 0, replaced.stderr
    assert len(pd.read_parquet(tmp_path / "out" / "image_features_raw.parquet")) == 1
