"""Duplicates in two stages: copies of real photos found, re-shoots kept apart, every pair reviewable."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance
from test_cli import skimgfeat

from skimgfeat import PhotoHashes, copy_distance, duplicate_groups
from skimgfeat.matching.copy_check import COPY_THRESHOLD, hash_photo

# -- the copy check on its own ----------------------------------------------------------


def scene(seed: int, size=(240, 180)) -> Image.Image:
    """A picture with structure: random rectangles and ellipses on a grey background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        box = (int(x0), int(y0), int(x0 + rng.integers(20, 120)), int(y0 + rng.integers(20, 90)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return image


def save_copy(source: Image.Image, target, *, scale=1.0, quality=90, crop=1.0, exposure=1.0) -> None:
    """A copy of ``source``: cropped (keep ``crop`` of each side, off centre), scaled, re-exposed, recompressed."""
    width, height = source.size
    keep_w, keep_h = round(width * crop), round(height * crop)
    image = source.crop((width - keep_w, 0, width, keep_h))
    image = image.resize((max(1, round(keep_w * scale)), max(1, round(keep_h * scale))), Image.Resampling.BICUBIC)
    ImageEnhance.Brightness(image).enhance(exposure).save(target, format="JPEG", quality=quality)


def test_copy_distance_is_small_for_copies_and_large_for_other_pictures(tmp_path):
    scene(1).save(tmp_path / "original.png")
    save_copy(scene(1), tmp_path / "copy.jpg", scale=0.5, quality=35, crop=0.93, exposure=0.75)
    scene(2).save(tmp_path / "other.png")
    original, copy, other = (hash_photo(tmp_path / name) for name in ("original.png", "copy.jpg", "other.png"))
    assert copy_distance(original, original) == 0
    assert copy_distance(original, copy) <= COPY_THRESHOLD < copy_distance(original, other)
    # one pair per row
    np.testing.assert_array_equal(copy_distance(np.stack([original, original]), np.stack([copy, original])),
                                  [copy_distance(original, copy), 0])


def test_photo_hashes_keep_each_unreadable_photo_with_its_reason_and_survive_parquet(tmp_path):
    scene(3).save(tmp_path / "good.png")
    (tmp_path / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a jpeg")
    hashes = PhotoHashes.compute([tmp_path / "good.png", tmp_path / "truncated.jpg", tmp_path / "gone.jpg", None],
                                 ["good.png", "truncated.jpg", "gone.jpg", "nothing"])
    assert hashes.error("good.png") == ""
    assert hashes.error("truncated.jpg").startswith(("truncated", "corrupt", "not an image"))
    assert hashes.error("gone.jpg").startswith("missing") and hashes.error("nothing").startswith("missing")
    again = PhotoHashes.read(hashes.write(tmp_path / "image_hashes.parquet"))
    assert again.names.tolist() == hashes.names.tolist() and again.errors.tolist() == hashes.errors.tolist()
    np.testing.assert_array_equal(again.hashes, hashes.hashes)  # all 64 bits, through a signed Parquet column


def test_a_group_linked_only_through_another_photo_is_flagged_chained():
    pairs = pd.DataFrame({"image_a": ["a", "a", "b", "x"], "image_b": ["b", "c", "c", "y"],
                          "verdict": ["copy", "different", "copy", "copy"]})
    groups = duplicate_groups(pairs)
    assert groups.values.tolist() == [[0, "a", True], [0, "b", True], [0, "c", True], [1, "x", False],
                                      [1, "y", False]]


# -- the command on real shop photos ----------------------------------------------------

# Two shots of one product moments apart: close in feature space (about 0.11 and 0.13), not copies.
RESHOOTS = {"melon": ("Fruit/Melon/Watermelon", "Watermelon_001.jpg", "Watermelon_002.jpg"),
            "juice": ("Packages/Juice/God-Morgon-Apple-Juice", "God-Morgon-Apple-Juice_001.jpg",
                      "God-Morgon-Apple-Juice_002.jpg")}
COPIES = {"resized": dict(scale=0.5, quality=40), "cropped": dict(crop=0.92), "reexposed": dict(exposure=0.75),
          "combined": dict(scale=0.55, quality=45, crop=0.94, exposure=1.2)}


@pytest.fixture(scope="module")
def shop(tmp_path_factory, grocery_photos, shared_weights):
    """Shop photos: a melon with one copy of each kind, a juice carton with one copy, the re-shoot of each, a banana.

    Extracted with the real weights and ``--hashes``. Outside the folder: new photos for ``--against``.
    """
    train = next(parent for parent in grocery_photos[0].parents if parent.name == "train")
    root = tmp_path_factory.mktemp("duplicates")
    photos, new = root / "photos", root / "new"
    photos.mkdir()
    new.mkdir()
    for label, (folder, first, second) in RESHOOTS.items():
        shutil.copy(train / folder / first, photos / f"{label}_1.jpg")
        shutil.copy(train / folder / second, photos / f"{label}_reshoot.jpg")
    shutil.copy(next((train / "Fruit/Banana").glob("*.jpg")), photos / "banana_1.jpg")
    melon = Image.open(photos / "melon_1.jpg").convert("RGB")
    for kind, edit in COPIES.items():
        save_copy(melon, photos / f"melon_{kind}.jpg", **edit)
    save_copy(Image.open(photos / "juice_1.jpg").convert("RGB"), photos / "juice_copy.jpg", crop=0.93, exposure=1.25)
    save_copy(Image.open(photos / "juice_1.jpg").convert("RGB"), new / "juice_new.jpg", scale=0.6, quality=35)
    shutil.copy(train / RESHOOTS["melon"][0] / "Watermelon_003.jpg", new / "melon_shot_again.jpg")
    env = {"SKIMGFEAT_WEIGHTS": str(shared_weights)}
    for folder, output in ((photos, root / "features"), (new, root / "new-features")):
        result = skimgfeat("extract", folder, "-o", output, "--pattern", "*.jpg", "--hashes", "-q", env=env)
        assert result.returncode == 0, result.stderr
    return root


def read_csv(text) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text) if isinstance(text, str) else text, keep_default_na=False)


@pytest.mark.shared
def test_each_copy_kind_is_grouped_with_its_original_and_reshoots_are_kept_apart(shop):
    table = shop / "features" / "image_features_raw.parquet"
    assert (shop / "features" / "image_hashes.parquet").is_file()
    result = skimgfeat("duplicates", "--features", table, "--pairs", shop / "pairs.csv", "--sheet", shop / "sheet.png")
    assert result.returncode == 0, result.stderr
    groups = read_csv(result.stdout)
    assert groups.columns.tolist() == ["group", "image_path", "chained"]
    members = groups.groupby("group")["image_path"].apply(sorted).tolist()
    assert members == [["juice_1.jpg", "juice_copy.jpg"],
                       sorted(["melon_1.jpg", *(f"melon_{kind}.jpg" for kind in COPIES)])]
    assert not groups["chained"].any()

    pairs = read_csv(shop / "pairs.csv")
    assert pairs.columns.tolist() == ["image_a", "image_b", "feature_distance", "copy_score", "verdict", "reason"]
    verdict = {frozenset(pair): v for *pair, v in zip(pairs["image_a"], pairs["image_b"], pairs["verdict"])}
    for label in RESHOOTS:  # a candidate by its features, refused by the copy check
        assert verdict[frozenset((f"{label}_1.jpg", f"{label}_reshoot.jpg"))] == "different"
    assert (pairs.loc[pairs["verdict"] == "copy", "copy_score"].astype(float) <= COPY_THRESHOLD).all()
    assert (pairs["feature_distance"].astype(float) <= 0.3).all()
    with Image.open(shop / "sheet.png") as sheet:  # one row per group: its first photo and the 4 (1) others
        assert sheet.format == "PNG" and sheet.width == 5 * 160 and 2 * 160 < sheet.height < 3 * 160


@pytest.mark.shared
def test_without_the_sidecar_the_photos_are_hashed_now_with_the_same_result(shop, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(shop / "features", features)
    (features / "image_hashes.parquet").unlink()
    result = skimgfeat("duplicates", "--features", features / "image_features_raw.parquet")
    assert result.returncode == 0, result.stderr
    assert "hashed now" in result.stderr
    with_sidecar = skimgfeat("duplicates", "--features", shop / "features" / "image_features_raw.parquet", "-q")
    assert result.stdout == with_sidecar.stdout and with_sidecar.stderr == ""


@pytest.mark.shared
def test_bad_and_missing_photos_in_a_pair_are_reported_not_fatal(shop, tmp_path):
    photos, features = tmp_path / "photos", tmp_path / "features"
    shutil.copytree(shop / "photos", photos)
    shutil.copytree(shop / "features", features)
    (features / "image_hashes.parquet").unlink()  # hashed now, from the damaged folder
    (photos / "melon_cropped.jpg").unlink()
    data = (photos / "juice_copy.jpg").read_bytes()
    (photos / "juice_copy.jpg").write_bytes(data[: len(data) // 3])
    result = skimgfeat("duplicates", "--features", features / "image_features_raw.parquet", "--image-dir", photos,
                       "--pairs", tmp_path / "pairs.csv")
    assert result.returncode == 0, result.stderr
    assert "melon_cropped.jpg: missing" in result.stderr and "juice_copy.jpg: truncated" in result.stderr
    pairs = read_csv(tmp_path / "pairs.csv")
    unreadable = pairs[pairs["verdict"] == "unreadable"]
    assert set(unreadable["image_a"]) | set(unreadable["image_b"]) >= {"melon_cropped.jpg", "juice_copy.jpg"}
    assert unreadable["reason"].str.contains("melon_cropped.jpg: missing|juice_copy.jpg: truncated").all()
    assert unreadable["copy_score"].eq("").all()
    listed = set(read_csv(result.stdout)["image_path"])
    assert "melon_resized.jpg" in listed and not listed & {"melon_cropped.jpg", "juice_copy.jpg"}


@pytest.mark.shared
def test_against_an_archive_table_finds_which_new_photos_exist_already(shop, shared_weights, tmp_path):
    archive = shop / "features" / "image_features_raw.parquet"
    fresh = tmp_path / "fresh.jpg"
    save_copy(Image.open(shop / "photos" / "melon_1.jpg").convert("RGB"), fresh, scale=0.45, quality=30)
    result = skimgfeat("duplicates", shop / "new-features" / "image_features_raw.parquet", fresh,
                       tmp_path / "gone.jpg", "--against", archive, "--pairs", tmp_path / "pairs.csv",
                       "--sheet", tmp_path / "sheet.png", "--weights", shared_weights)
    assert result.returncode == 0, result.stderr
    found = read_csv(result.stdout)
    assert found.columns.tolist() == ["image_path", "duplicate_of", "feature_distance", "copy_score"]
    assert set(zip(found["image_path"], found["duplicate_of"])) == {
        ("juice_new.jpg", "juice_1.jpg"), ("juice_new.jpg", "juice_copy.jpg"),
        (str(fresh), "melon_1.jpg"), *((str(fresh), f"melon_{kind}.jpg") for kind in COPIES)}
    pairs = read_csv(tmp_path / "pairs.csv")
    shot_again = pairs[pairs["image_a"] == "melon_shot_again.jpg"]  # a third shot of the melon: not in the archive
    assert len(shot_again) and shot_again["verdict"].eq("different").all()
    gone = pairs[pairs["image_a"] == str(tmp_path / "gone.jpg")]
    assert gone["verdict"].tolist() == ["unreadable"] and gone["reason"].str.contains("gone.jpg: missing").all()
    assert "cannot read" in result.stderr and "gone.jpg: missing" in result.stderr
    with Image.open(tmp_path / "sheet.png") as sheet:  # the two new photos found, each with its copies
        assert sheet.width == 6 * 160 and 2 * 160 < sheet.height < 3 * 160


@pytest.mark.shared
def test_an_index_directory_groups_and_answers_against_like_its_table(shop, tmp_path):
    table = shop / "features" / "image_features_raw.parquet"
    built = skimgfeat("index", "build", table, "-o", tmp_path / "index", "-q")
    assert built.returncode == 0, built.stderr
    from_table = skimgfeat("duplicates", "--features", table, "-q")
    from_index = skimgfeat("duplicates", "--index", tmp_path / "index", "--hashes", shop / "features" /
                           "image_hashes.parquet", "-q")
    assert from_index.returncode == 0, from_index.stderr
    assert from_index.stdout == from_table.stdout and from_index.stderr == ""
    against = skimgfeat("duplicates", shop / "new-features" / "image_features_raw.parquet",
                        "--against", tmp_path / "index")  # no hashes in the index directory: hashed now
    assert against.returncode == 0, against.stderr
    assert "hashed now" in against.stderr
    found = read_csv(against.stdout)
    assert sorted(zip(found["image_path"], found["duplicate_of"])) == [("juice_new.jpg", "juice_1.jpg"),
                                                                      ("juice_new.jpg", "juice_copy.jpg")]


@pytest.mark.shared
def test_without_the_copy_check_one_feature_threshold_decides_and_chains_reshoots(shop, tmp_path):
    result = skimgfeat("duplicates", "--features", shop / "features" / "image_features_raw.parquet",
                       "--no-copy-check", "--threshold", "0.2", "--pairs", tmp_path / "pairs.csv")
    assert result.returncode == 0, result.stderr
    groups = read_csv(result.stdout)
    group_of = dict(zip(groups["image_path"], groups["group"]))
    assert group_of["melon_reshoot.jpg"] == group_of["melon_1.jpg"]  # what the copy check is for
    pairs = read_csv(tmp_path / "pairs.csv")
    assert pairs["verdict"].eq("copy").all() and pairs["copy_score"].eq("").all()


def test_features_and_against_exclude_each_other(tmp_path):
    result = skimgfeat("duplicates", "--features", tmp_path / "a.parquet", "--against", tmp_path / "b.parquet")
    assert result.returncode == 2 and "not allowed with argument --features" in result.stderr
    result = skimgfeat("duplicates", "--against", tmp_path / "b.parquet")
    assert result.returncode == 2 and "--against needs NEW" in result.stderr
    result = skimgfeat("duplicates", "new.jpg", "--features", tmp_path / "a.parquet")
    assert result.returncode == 2 and "go with --against" in result.stderr
