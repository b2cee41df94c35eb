"""Which files `skimgfeat extract` reads from a folder when no --pattern is given."""

from __future__ import annotations

import shutil

import pandas as pd
from _launcher import run_cli

from skimgfeat.feature_tables import image_suffixes, list_images


def test_extract_without_a_pattern_reads_every_image_type_in_any_case(synthetic_photos, tmp_path):
    folder = tmp_path / "camera roll"
    folder.mkdir()
    jpeg, png = synthetic_photos[0], synthetic_photos[1]
    shutil.copy(jpeg, folder / "lot1_1.jpg")
    shutil.copy(jpeg, folder / "lot1_2.JPG")  # what cameras and phones write
    shutil.copy(png, folder / "lot2_1.png")
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    result = run_cli("extract", folder, "-o", output, "--weights", "none", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    raw = pd.read_parquet(output / "image_features_raw.parquet")
    assert raw.image_name.tolist() == ["lot1_1.jpg", "lot1_2.JPG", "lot2_1.png"]
    assert (raw.error == "").all()


def test_the_original_modules_default_stays_webp_and_case_sensitive(tmp_path):
    for name in ["a.webp", "b.WEBP", "c.jpg"]:
        (tmp_path / name).write_bytes(b"")
    assert [path.name for path in list_images(tmp_path)] == ["a.webp"]
    assert [path.name for path in list_images(tmp_path, "*.webp", case_sensitive=False)] == ["a.webp", "b.WEBP"]
    assert [path.name for path in list_images(tmp_path, None)] == ["a.webp", "b.WEBP", "c.jpg"]
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} <= image_suffixes()
    assert ".txt" not in image_suffixes() and ".h5" not in image_suffixes()  # Pillow only identifies HDF5
