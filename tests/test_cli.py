"""The `skimgfeat` command line, run for real in child processes (see tests/_launcher.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _launcher import run_cli
from PIL import Image

from skimgfeat.storage.io import read_model_info

FEATURES = [f"img_feature_{i}" for i in range(1280)]
RAW_COLUMNS = ["image_path", "image_name", *FEATURES, "error"]
ITEM_COLUMNS = ["item_id", *FEATURES]
# Spaces, quotes and non-ASCII in the folder and file names: they must work everywhere.
AWKWARD_FOLDER = "photos d'été \"2024\""
AWKWARD_ITEM = "café crème"


def skimgfeat(*args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``skimgfeat ARGS`` in a child process with stdout and stderr captured (so stderr is no terminal)."""
    environment = {key: value for key, value in os.environ.items() if key != "SKIMGFEAT_WEIGHTS"}
    environment.update(env or {})
    return run_cli(*args, env=environment, timeout=timeout)


def save_webp(source: Path, target: Path, size: int = 128) -> None:
    with Image.open(source) as image:
        image.convert("RGB").resize((size, size)).save(target, format="WEBP", quality=85)


@pytest.fixture(scope="module")
def shop_photos(tmp_path_factory, grocery_photos) -> Path:
    """14 real shop photos as 128 px WebP `<item>_<n>.webp` (5 items), plus files the pattern must skip."""
    folder = tmp_path_factory.mktemp("cli") / AWKWARD_FOLDER
    folder.mkdir()
    for i, source in enumerate(grocery_photos[::40][:12]):
        save_webp(source, folder / f"{84500 + i // 3}_{i % 3 + 1}.webp")
    save_webp(grocery_photos[1], folder / f"{AWKWARD_ITEM}_1.webp")
    save_webp(grocery_photos[2], folder / f"{AWKWARD_ITEM}_2.webp")
    save_webp(grocery_photos[3], folder / "84500_4.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def parquet_run(shop_photos, shared_weights, tmp_path_factory):
    """One extraction with the real weights given by $SKIMGFEAT_WEIGHTS, as `make demo` does offline."""
    output = tmp_path_factory.mktemp("out") / "features ünïcode"
    result = skimgfeat(
        "extract", shop_photos, "--output-dir", output, "--pattern", "*.webp", "--batch-size", "4",
        env={"SKIMGFEAT_WEIGHTS": str(shared_weights)},
    )
    assert result.returncode == 0, result.stderr
    return result, output


@pytest.mark.shared
def test_extract_writes_the_original_files_and_columns(parquet_run):
    result, output = parquet_run
    assert sorted(p.name for p in output.iterdir()) == [
        "image_errors.csv", "image_features_by_item.parquet", "image_features_raw.parquet", "model_info.json",
    ]
    raw = pd.read_parquet(output / "image_features_raw.parquet")
    by_item = pd.read_parquet(output / "image_features_by_item.parquet")
    assert raw.columns.tolist() == RAW_COLUMNS  # the original columns plus the documented `error`
    assert by_item.columns.tolist() == ITEM_COLUMNS
    assert len(raw) == 14 and (raw.error == "").all()
    assert raw.image_path.tolist() == sorted(raw.image_path)


@pytest.mark.shared
def test_files_not_matching_the_pattern_are_ignored(parquet_run):
    raw = pd.read_parquet(parquet_run[1] / "image_features_raw.parquet")
    assert all(name.endswith(".webp") for name in raw.image_name)
    assert f"{AWKWARD_ITEM}_2.webp" in set(raw.image_name)


@pytest.mark.shared
def test_each_item_row_is_the_mean_of_its_photos(parquet_run):
    output = parquet_run[1]
    raw = pd.read_parquet(output / "image_features_raw.parquet")
    by_item = pd.read_parquet(output / "image_features_by_item.parquet").set_index("item_id")
    assert by_item.index.tolist() == ["84500", "84501", "84502", "84503", AWKWARD_ITEM]
    for item, photos in raw.groupby(raw.image_name.str.rsplit("_", n=1).str[0]):
        expected = photos[FEATURES].to_numpy(np.float64).mean(axis=0)
        np.testing.assert_allclose(by_item.loc[item, FEATURES].to_numpy(np.float64), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.shared
def test_the_features_are_the_real_weights_features(parquet_run, shop_photos, shared_weights):
    from skimgfeat import CNNImageEmbedder

    raw = pd.read_parquet(parquet_run[1] / "image_features_raw.parquet")
    paths = [shop_photos / name for name in raw.image_path[:3]]
    expected = CNNImageEmbedder(weights=shared_weights, device="cpu").fit().transform(paths)
    np.testing.assert_allclose(raw[FEATURES].to_numpy()[:3], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.shared
def test_model_info_names_the_weights_from_the_environment(parquet_run, shared_weights):
    output = parquet_run[1]
    info = json.loads((output / "model_info.json").read_text(encoding="utf-8"))
    assert info["weights"] == f"file:{shared_weights.resolve()}"
    assert info["weights_sha256"] == "b1a7bee6de17ef6686d6f5a7c6be7cf33f1789560f84a814fe8dc1525a9e9c4e"
    assert info["n_features"] == 1280 and info["aggregation"] == "mean" and info["device"] == "cpu"
    assert read_model_info(output / "image_features_raw.parquet")["weights_sha256"] == info["weights_sha256"]


@pytest.mark.shared
def test_the_summary_goes_to_stdout_and_no_progress_bar_without_a_terminal(parquet_run):
    result = parquet_run[0]
    assert "images:          14 (14 done, 0 failed)" in result.stdout
    assert "feature width:   1280" in result.stdout
    assert "images/s" in result.stdout and "Feature statistics" in result.stdout and "Sample rows" in result.stdout
    assert result.stderr == ""


@pytest.mark.shared
def test_csv_output_and_max_aggregation(shop_photos, shared_weights, tmp_path):
    result = skimgfeat(
        "extract", shop_photos, "-o", tmp_path, "--weights", shared_weights, "--format", "csv",
        "--aggregate", "max", "--max-images", "6", "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    raw = pd.read_csv(tmp_path / "image_features_raw.csv", keep_default_na=False)
    by_item = pd.read_csv(tmp_path / "image_features_by_item.csv", dtype={"item_id": str})
    assert raw.columns.tolist() == RAW_COLUMNS and len(raw) == 6
    assert by_item.columns.tolist() == ITEM_COLUMNS
    assert by_item.item_id.tolist() == ["84500", "84501"]
    # Every image type is read by default: item 84500 is its three WebP photos and its PNG.
    first_item = raw[raw.image_name.str.startswith("84500_")]
    assert sorted(first_item.image_name) == ["84500_1.webp", "84500_2.webp", "84500_3.webp", "84500_4.png"]
    np.testing.assert_allclose(by_item.iloc[0][FEATURES].to_numpy(float), first_item[FEATURES].max().to_numpy())


# -- without ../shared -----------------------------------------------------------------


@pytest.fixture
def photos_with_broken_files(tmp_path, synthetic_photos) -> Path:
    folder = tmp_path / "in put"
    folder.mkdir()
    for path in synthetic_photos:
        Image.open(path).save(folder / f"{path.stem}.webp")
    (folder / "empty_1.webp").write_bytes(b"")
    (folder / "text_1.webp").write_text("this is not a picture")
    good = (folder / "item0_1.webp").read_bytes()
    (folder / "truncated_1.webp").write_bytes(good[: len(good) // 2])
    return folder


def test_broken_files_are_reported_and_do_not_stop_the_run(photos_with_broken_files, tmp_path):
    result = skimgfeat("extract", photos_with_broken_files, "-o", tmp_path, "--weights", "none", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    errors = pd.read_csv(tmp_path / "image_errors.csv")
    assert errors.columns.tolist() == ["image_path", "reason", "detail"]
    assert errors.image_path.tolist() == ["empty_1.webp", "text_1.webp", "truncated_1.webp"]
    assert errors.reason.tolist() == ["empty", "not an image", "truncated"]
    raw = pd.read_parquet(tmp_path / "image_features_raw.parquet").set_index("image_path")
    assert len(raw) == 9
    assert raw.loc[errors.image_path, FEATURES].isna().all().all()
    assert raw.loc[errors.image_path, "error"].str.startswith(("empty", "not an image", "truncated")).all()
    assert raw.drop(index=errors.image_path)[FEATURES].notna().all().all()
    by_item = pd.read_parquet(tmp_path / "image_features_by_item.parquet")
    assert by_item.item_id.tolist() == ["empty", "item0", "item1", "item2", "text", "truncated"]
    assert "images:          9 (6 done, 3 failed)" in result.stdout
    for name in errors.image_path:
        assert name in result.stdout


def test_strict_exits_3_when_an_image_failed(photos_with_broken_files, tmp_path):
    result = skimgfeat("extract", photos_with_broken_files, "-o", tmp_path, "--weights", "none", "--strict", "-q")
    assert result.returncode == 3
    assert (tmp_path / "image_features_raw.parquet").is_file()


def test_sample_images_then_extract_is_the_demo(tmp_path):
    photos = tmp_path / "sample photos"
    made = skimgfeat("sample-images", photos)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in photos.iterdir()) == [f"{item}_{n}.webp" for item in ("china", "flower")
                                                         for n in (1, 2, 3)]
    result = skimgfeat("extract", photos, "--output-dir", tmp_path / "features", "--pattern", "*.webp",
                       "--weights", "none", "--seed", "3")
    assert result.returncode == 0, result.stderr
    by_item = pd.read_parquet(tmp_path / "features" / "image_features_by_item.parquet")
    assert by_item.item_id.tolist() == ["china", "flower"]
    assert by_item[FEATURES].notna().all().all()


def test_models_lists_names_widths_and_default_weights():
    result = skimgfeat("models")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert rows["mobilenet_v2"] == ["1280", "IMAGENET1K_V1", "256x256", "->", "crop", "224,", "bilinear"]
    assert rows["shufflenet_v2_x1_0"][:2] == ["1024", "IMAGENET1K_V1"]


def test_the_console_script_documents_the_exit_codes():
    script = Path(sys.executable).with_name("skimgfeat")
    if not script.exists():
        pytest.skip("the skimgfeat console script is not installed next to this interpreter")
    result = subprocess.run([script, "extract", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "--resume" in result.stdout and "SKIMGFEAT_WEIGHTS" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["extract", "no such folder", "-o", "out"], "image folder 'no such folder' does not exist"),
        (["extract", ".", "-o", "out", "--pattern", "*.nothing"], "no file matching '*.nothing'"),
        (["extract", "{photos}", "-o", "out", "--model", "vgg99"], "unknown model_name 'vgg99'"),
        (["extract", "{photos}", "-o", "out", "--weights", "missing.pth"], "weights file 'missing.pth' does not exist"),
    ],
)
def test_errors_are_one_line_naming_the_cause_with_exit_code_2(arguments, message, synthetic_photos, tmp_path):
    arguments = [a.replace("{photos}", str(synthetic_photos[0].parent)) for a in arguments]
    arguments += ["--pattern", "*.jpg"] if "--pattern" not in arguments else []
    result = run_cli(*arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("skimgfeat: error: ")
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_verbose_adds_the_traceback(tmp_path):
    result = skimgfeat("extract", tmp_path / "missing", "-o", tmp_path / "out", "--verbose")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and result.stderr.rstrip().splitlines()[-1].startswith("skimgfeat: error:")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_progress_bar_with_rate_and_eta_when_stderr_is_a_terminal(synthetic_photos, tmp_path):
    import fcntl
    import struct
    import termios

    primary, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    arguments = ["extract", synthetic_photos[0].parent, "-o", tmp_path, "--pattern", "*.jpg", "--weights", "none",
                 "--batch-size", "1"]
    process = subprocess.Popen([sys.executable, "-m", "skimgfeat", *map(str, arguments)],
                               stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert process.wait(timeout=300) == 0
    final = shown.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert "3/3" in final and "100%" in final and "img/s" in final and "<" in final  # [elapsed<eta, rate]


@pytest.mark.skipif(sys.platform != "linux", reason="file names as raw bytes: a POSIX file system")
def test_a_file_name_that_is_not_utf8_is_written_escaped(synthetic_photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(synthetic_photos[0]).save(folder / "plain_1.webp")
    Image.open(synthetic_photos[1]).save(os.fsdecode(os.fsencode(folder) + b"/caf\xe9_1.webp"), format="WEBP")
    (folder / os.fsdecode(b"caf\xe9_2.webp")).write_bytes(b"")  # and a broken one
    result = skimgfeat("extract", folder, "-o", tmp_path / "out", "--weights", "none", "-q")
    assert result.returncode == 0, result.stderr
    raw = pd.read_parquet(tmp_path / "out" / "image_features_raw.parquet")
    assert raw.image_name.tolist() == ["caf\\xe9_1.webp", "caf\\xe9_2.webp", "plain_1.webp"]
    assert raw.loc[0, FEATURES].notna().all() and raw.loc[1, "error"].startswith("empty")
    by_item = pd.read_parquet(tmp_path / "out" / "image_features_by_item.parquet")
    assert by_item.item_id.tolist() == ["caf\\xe9", "plain"]
    assert pd.read_csv(tmp_path / "out" / "image_errors.csv").image_path.tolist() == ["caf\\xe9_2.webp"]
