"""Duplicates in two stages: copies of real photos found, re-shoots kept apart, every pair reviewable."""

from __future__ import annotations

import io
import shutil
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from _copy_cases import centred_crop, framed_work, mirrored, on_backdrop, reencoded, studio_backdrop, with_border
from PIL import Image, ImageDraw, ImageEnhance
from test_cli import skimgfeat

from skimgfeat import PhotoHashes, copy_distance, duplicate_groups
from skimgfeat.matching.copy_check import (
    COPY_THRESHOLD,
    content_agrees,
    copy_match,
    copy_thresholds,
    hash_photo,
    photo_hashes,
    verify_copy,
)
from skimgfeat.matching.local_features import detect_local_features

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


# -- the hard cases, on the held-out half (grocery val photos, objects 26-50, frames 2-3) ------------------------
# The thresholds were chosen by benchmarks/duplicate_threshold.py on the other half.


def jpeg_again(image: Image.Image, quality: int = 80) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def evidence(first: Image.Image, second: Image.Image):
    """(copy distance, whether the hashes call it mirrored, the pair's threshold, the content check) of two pictures."""
    hashes = [photo_hashes(thumbnail(image)) for image in (first, second)]
    distance, flipped = copy_match(*hashes)
    features = [detect_local_features(np.asarray(image.convert("L"))) for image in
                ((mirrored(first) if flipped else first), second)]
    return distance, flipped, copy_thresholds(*hashes), verify_copy(*features, mirrored=flipped)


def thumbnail(image: Image.Image) -> Image.Image:
    small = image.copy()
    small.thumbnail((128, 128))  # as hash_photo decodes a file
    return small


@pytest.fixture(scope="module")
def held_out_shop(grocery_photos) -> list[Image.Image]:
    val = next(parent for parent in grocery_photos[0].parents if parent.name == "train").parent / "val"
    return [Image.open(path).convert("RGB") for path in sorted(val.rglob("*.jpg"))[::300][:3]]


@pytest.mark.shared
@pytest.mark.parametrize("edit", ["centred 80 %", "centred 88 %", "mirrored", "white border 8 %", "black border 6 %"])
def test_copy_edits_off_the_hash_windows_are_copies(held_out_shop, edit):
    """Copies the corner windows never lined up with: a crop around the middle, a mirror image, a mat."""
    make = {"centred 80 %": lambda image: centred_crop(image, 0.80),
            "centred 88 %": lambda image: centred_crop(image, 0.88),
            "mirrored": mirrored,
            "white border 8 %": lambda image: with_border(image, 0.08),
            "black border 6 %": lambda image: with_border(image, 0.06, (15, 15, 15))}[edit]
    for photo in held_out_shop:
        distance, flipped, threshold, content = evidence(photo, jpeg_again(make(photo), 70))
        assert distance <= threshold, (edit, distance, threshold)
        assert flipped == (edit == "mirrored")
        assert content_agrees(content), (edit, content)


@pytest.mark.shared
def test_different_drawings_behind_one_frame_share_their_hashes_but_not_their_content():
    """The framed-works sale: frame, mat and paper agree within a few bits; the pen strokes do not match."""
    works = [framed_work(100 * frame + drawing, frame=frame) for frame in (2, 3) for drawing in range(3)]
    hash_agreements = 0
    for first, second in combinations(range(len(works)), 2):
        distance, _, threshold, content = evidence(works[first], works[second])
        hash_agreements += distance <= threshold
        assert not content_agrees(content), (first, second, content)
    assert hash_agreements >= 3  # the case is hard: the hashes alone would call these copies
    for work in works[::3]:  # a re-encoded, resized or lightly cropped copy of one stays a copy
        for copy in (jpeg_again(work.resize((work.width // 2, work.height // 2)), 40),
                     jpeg_again(centred_crop(work, 0.94))):
            distance, _, threshold, content = evidence(work, copy)
            assert distance <= threshold and content_agrees(content)


@pytest.mark.shared
@pytest.mark.parametrize("backdrop", ["studio", "room"])
def test_different_objects_on_one_backdrop_are_never_copies_wherever_they_stand(shared_dir, backdrop):
    covers = sorted((shared_dir / "images" / "objects").glob("*_reference.jpg"))[25:30]
    room = Image.open(shared_dir / "images" / "houses" / "2_bedroom.jpg").convert("RGB").resize((640, 480))
    scene_of = {"studio": studio_backdrop(), "room": room}[backdrop]
    positions = [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5), (0.0, 1.0), (1.0, 0.3)]
    photos = [on_backdrop(cover, scene_of, fraction=0.3, position=position)
              for cover, position in zip(covers, positions)]
    for first, second in combinations(photos, 2):
        distance, _, threshold, content = evidence(first, second)
        assert not (distance <= threshold and content_agrees(content))
    distance, _, threshold, content = evidence(photos[2], jpeg_again(reencoded(photos[2], 0.6), 45))
    assert distance <= threshold and content_agrees(content)


def test_photo_hashes_are_imagehash_phash_of_each_window_bit_for_bit():
    # The hashes of every window are computed with one DCT for all 14 (for speed); they must stay
    # imagehash's, bit for bit, or hashes stored by an earlier version would no longer match.
    import imagehash
    from PIL import ImageOps

    from skimgfeat.matching.copy_check import _phashes

    rng = np.random.default_rng(5)
    for picture in (scene(11).convert("L"), scene(12, (64, 200)).convert("L"), Image.linear_gradient("L"),
                    Image.fromarray(rng.integers(0, 256, (9, 13), dtype=np.uint8))):
        windows = [picture, picture.crop((2, 3, picture.width // 2 + 3, picture.height - 1)), ImageOps.mirror(picture)]
        expected = [int(str(imagehash.phash(window)), 16) for window in windows]
        assert _phashes(windows).tolist() == expected


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


# -- the command on real shop photos (the held-out half: grocery val photos, objects 26-50, frame 2) ------------

# Two shots of one product moments apart: close in feature space, not copies.
RESHOOTS = {"melon": ("Fruit/Melon/Watermelon", "Watermelon_001.jpg", "Watermelon_002.jpg"),
            "juice": ("Packages/Juice/God-Morgon-Apple-Juice", "God-Morgon-Apple-Juice_001.jpg",
                      "God-Morgon-Apple-Juice_002.jpg")}
# Copy edits off the hash windows' grid, and two on it.
COPIES = {"resized": lambda image: reencoded(image, 0.5), "centred": lambda image: centred_crop(image, 0.82),
          "mirrored": mirrored, "bordered": lambda image: with_border(image, 0.08),
          "reexposed": lambda image: ImageEnhance.Brightness(image).enhance(0.75)}
FRAMED = [f"framed_{i}.jpg" for i in range(3)]
ON_BACKDROP = [f"cover_{i}.jpg" for i in range(4)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory, grocery_photos, shared_weights):
    """Shop photos: a melon with one copy of each kind, a juice carton with one copy, the re-shoot of each, a banana;
    three drawings behind one frame (the first with a copy), four DVD covers on one room backdrop.

    Extracted with the real weights, ``--hashes`` and ``--local-features``. Outside the folder:
    new photos for ``--against``, two folders that both hold a ``lot.jpg``.
    """
    val = next(parent for parent in grocery_photos[0].parents if parent.name == "train").parent / "val"
    shared = val.parents[2]
    root = tmp_path_factory.mktemp("duplicates")
    photos, new, other_new = root / "photos", root / "new", root / "other-new"
    for folder in (photos, new, other_new):
        folder.mkdir()
    for label, (folder, first, second) in RESHOOTS.items():
        shutil.copy(val / folder / first, photos / f"{label}_1.jpg")
        shutil.copy(val / folder / second, photos / f"{label}_reshoot.jpg")
    shutil.copy(next((val / "Fruit/Banana").glob("*.jpg")), photos / "banana_1.jpg")
    melon = Image.open(photos / "melon_1.jpg").convert("RGB")
    for kind, edit in COPIES.items():
        edit(melon).convert("RGB").save(photos / f"melon_{kind}.jpg", quality=45 if kind == "resized" else 85)
    juice = Image.open(photos / "juice_1.jpg").convert("RGB")
    ImageEnhance.Brightness(centred_crop(juice, 0.9)).enhance(1.25).save(photos / "juice_copy.jpg", quality=80)
    for drawing, name in enumerate(FRAMED):
        framed_work(200 + drawing, frame=2).save(photos / name, quality=90)
    reencoded(Image.open(photos / FRAMED[0]), 0.6).save(photos / "framed_0_copy.jpg", quality=50)
    room = Image.open(shared / "images" / "houses" / "2_bedroom.jpg").convert("RGB").resize((640, 480))
    covers = sorted((shared / "images" / "objects").glob("*_reference.jpg"))[26:30]
    for cover, position, name in zip(covers, [(0, 0), (1, 1), (0, 1), (1, 0)], ON_BACKDROP):
        on_backdrop(cover, room, fraction=0.3, position=position).save(photos / name, quality=90)
    reencoded(juice, 0.6).save(new / "lot.jpg", quality=35)
    shutil.copy(val / RESHOOTS["melon"][0] / "Watermelon_003.jpg", other_new / "lot.jpg")
    env = {"SKIMGFEAT_WEIGHTS": str(shared_weights)}
    for folder, output in ((photos, root / "features"), (new, root / "new-features"),
                           (other_new, root / "other-new-features")):
        result = skimgfeat("extract", folder, "-o", output, "--pattern", "*.jpg", "--hashes", "--local-features",
                           "-q", env=env)
        assert result.returncode == 0, result.stderr
    return root


def read_csv(text) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text) if isinstance(text, str) else text, keep_default_na=False)


@pytest.mark.shared
def test_each_copy_kind_is_grouped_with_its_original_and_look_alikes_are_kept_apart(shop):
    """Off-grid copies join their original; re-shoots, drawings behind one frame and covers on one backdrop do not,
    though the hashes of the last two agree."""
    table = shop / "features" / "image_features_raw.parquet"
    assert (shop / "features" / "image_hashes.parquet").is_file()
    result = skimgfeat("duplicates", "--features", table, "--pairs", shop / "pairs.csv", "--sheet", shop / "sheet.png")
    assert result.returncode == 0, result.stderr
    groups = read_csv(result.stdout)
    assert groups.columns.tolist() == ["group", "image_path", "chained"]
    members = {frozenset(group) for _, group in groups.groupby("group")["image_path"]}
    assert members == {frozenset(("juice_1.jpg", "juice_copy.jpg")), frozenset(("framed_0.jpg", "framed_0_copy.jpg")),
                       frozenset(("melon_1.jpg", *(f"melon_{kind}.jpg" for kind in COPIES)))}
    # The melon's copies are each a copy of it, not all of each other (a mat and a crop make two edits apart).
    assert not groups.loc[~groups["image_path"].str.startswith("melon"), "chained"].any()

    pairs = read_csv(shop / "pairs.csv")
    assert pairs.columns.tolist() == ["image_a", "image_b", "feature_distance", "copy_score", "verdict", "reason",
                                      "inliers", "copy_coverage", "copy_unmatched", "copy_pixels"]
    verdict = {frozenset(pair): v for *pair, v in zip(pairs["image_a"], pairs["image_b"], pairs["verdict"])}
    for label in RESHOOTS:  # a candidate by its features, refused by the copy check
        assert verdict[frozenset((f"{label}_1.jpg", f"{label}_reshoot.jpg"))] != "copy"
    look_alikes = pairs[pairs["image_a"].isin(FRAMED + ON_BACKDROP) & pairs["image_b"].isin(FRAMED + ON_BACKDROP)]
    assert len(look_alikes) and (look_alikes["verdict"] != "copy").all()
    # The hard part: their hashes agree as closely as a copy's; the content check refused them.
    assert (look_alikes["copy_score"].astype(float) <= COPY_THRESHOLD).sum() >= 2
    copies = pairs[pairs["verdict"] == "copy"]
    assert (copies["copy_score"].astype(float) <= COPY_THRESHOLD).all() and (copies["inliers"] > 0).all()
    assert (pairs["feature_distance"].astype(float) <= 0.3).all()
    with Image.open(shop / "sheet.png") as sheet:  # one row per group: its first photo and the 5 (1, 1) others
        assert sheet.format == "PNG" and sheet.width == 6 * 160 and 3 * 160 < sheet.height < 4 * 160


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
def test_a_photo_without_stored_local_features_is_decided_by_its_hashes_not_fatal(shop, tmp_path):
    """Local features stored for every photo but one: the run goes on; that photo's hashes and pixels decide."""
    from skimgfeat.matching.local_features import write_local_features

    photos = sorted((shop / "photos").glob("*.jpg"))
    write_local_features([photo for photo in photos if photo.name != "melon_resized.jpg"], tmp_path / "local",
                         image_dir=shop / "photos")
    result = skimgfeat("duplicates", "--features", shop / "features" / "image_features_raw.parquet",
                       "--local-features", tmp_path / "local", "--pairs", tmp_path / "pairs.csv")
    assert result.returncode == 0, result.stderr
    assert "without stored local features: their hashes decided them" in result.stderr
    pairs = read_csv(tmp_path / "pairs.csv")
    without = pairs["image_a"].eq("melon_resized.jpg") | pairs["image_b"].eq("melon_resized.jpg")
    assert without.any()
    assert pairs.loc[without, "reason"].str.fullmatch("no local features for melon_resized.jpg: hashes "
                                                      "(alone|and pixels) decided").all()
    # The photos are at hand: the pixels confirmed each copy the stricter hash rule proposed.
    copies = without & pairs["verdict"].eq("copy")
    assert copies.any() and pairs.loc[copies, "reason"].str.endswith("hashes and pixels decided").all()
    assert not pairs.loc[~without, "reason"].str.contains("decided").any()
    groups = read_csv(result.stdout)  # a resized copy passes the stricter hash rule too
    group_of = dict(zip(groups["image_path"], groups["group"]))
    assert group_of["melon_resized.jpg"] == group_of["melon_1.jpg"]


@pytest.mark.shared
def test_bad_and_missing_photos_in_a_pair_are_reported_not_fatal(shop, tmp_path):
    photos, features = tmp_path / "photos", tmp_path / "features"
    shutil.copytree(shop / "photos", photos)
    shutil.copytree(shop / "features", features)
    (features / "image_hashes.parquet").unlink()  # hashed now, from the damaged folder
    (photos / "melon_centred.jpg").unlink()
    data = (photos / "juice_copy.jpg").read_bytes()
    (photos / "juice_copy.jpg").write_bytes(data[: len(data) // 3])
    result = skimgfeat("duplicates", "--features", features / "image_features_raw.parquet", "--image-dir", photos,
                       "--pairs", tmp_path / "pairs.csv")
    assert result.returncode == 0, result.stderr
    assert "melon_centred.jpg: missing" in result.stderr and "juice_copy.jpg: truncated" in result.stderr
    pairs = read_csv(tmp_path / "pairs.csv")
    unreadable = pairs[pairs["verdict"] == "unreadable"]
    assert set(unreadable["image_a"]) | set(unreadable["image_b"]) >= {"melon_centred.jpg", "juice_copy.jpg"}
    assert unreadable["reason"].str.contains("melon_centred.jpg: missing|juice_copy.jpg: truncated").all()
    assert unreadable["copy_score"].eq("").all()
    listed = set(read_csv(result.stdout)["image_path"])
    assert "melon_resized.jpg" in listed and not listed & {"melon_centred.jpg", "juice_copy.jpg"}


@pytest.mark.shared
def test_against_an_archive_table_finds_which_new_photos_exist_already(shop, shared_weights, tmp_path):
    """Two new tables both hold a `lot.jpg` (a copy of the juice, a third shot of the melon): each keeps its own
    hashes and is reported by its path."""
    archive = shop / "features" / "image_features_raw.parquet"
    fresh = tmp_path / "fresh.jpg"
    reencoded(Image.open(shop / "photos" / "melon_1.jpg").convert("RGB"), 0.45).save(fresh, quality=30)
    result = skimgfeat("duplicates", shop / "new-features" / "image_features_raw.parquet",
                       shop / "other-new-features" / "image_features_raw.parquet", fresh,
                       tmp_path / "gone.jpg", "--against", archive, "--pairs", tmp_path / "pairs.csv",
                       "--sheet", tmp_path / "sheet.png", "--weights", shared_weights)
    assert result.returncode == 0, result.stderr
    found = read_csv(result.stdout)
    assert found.columns.tolist() == ["image_path", "duplicate_of", "feature_distance", "copy_score"]
    juice_lot, melon_lot = str(shop / "new" / "lot.jpg"), str(shop / "other-new" / "lot.jpg")
    assert set(zip(found["image_path"], found["duplicate_of"])) == {
        (juice_lot, "juice_1.jpg"), (juice_lot, "juice_copy.jpg"),
        (str(fresh), "melon_1.jpg"), *((str(fresh), f"melon_{kind}.jpg") for kind in COPIES)}
    pairs = read_csv(tmp_path / "pairs.csv")
    shot_again = pairs[pairs["image_a"] == melon_lot]  # a third shot of the melon: not in the archive
    assert len(shot_again) and shot_again["verdict"].eq("different").all()
    gone = pairs[pairs["image_a"] == str(tmp_path / "gone.jpg")]
    assert gone["verdict"].tolist() == ["unreadable"] and gone["reason"].str.contains("gone.jpg: missing").all()
    assert "cannot read" in result.stderr and "gone.jpg: missing" in result.stderr
    with Image.open(tmp_path / "sheet.png") as sheet:  # the two new photos found, each with its copies
        assert sheet.width == 7 * 160 and 2 * 160 < sheet.height < 3 * 160


@pytest.mark.shared
def test_an_index_directory_groups_and_answers_against_like_its_table(shop, tmp_path):
    table = shop / "features" / "image_features_raw.parquet"
    built = skimgfeat("index", "build", table, "-o", tmp_path / "index", "-q")
    assert built.returncode == 0, built.stderr
    from_table = skimgfeat("duplicates", "--features", table, "-q")
    from_index = skimgfeat("duplicates", "--index", tmp_path / "index", "--hashes", shop / "features" /
                           "image_hashes.parquet", "--local-features", shop / "features" / "local_features", "-q")
    assert from_index.returncode == 0, from_index.stderr
    assert from_index.stdout == from_table.stdout and from_index.stderr == ""
    against = skimgfeat("duplicates", shop / "new-features" / "image_features_raw.parquet",
                        "--against", tmp_path / "index")  # no hashes nor local features there: hashed now, strictly
    assert against.returncode == 0, against.stderr
    assert "hashed now" in against.stderr and "the hashes alone decide" in against.stderr
    found = read_csv(against.stdout)
    assert sorted(zip(found["image_path"], found["duplicate_of"]))[:1] == [("lot.jpg", "juice_1.jpg")]


@pytest.mark.shared
def test_without_the_copy_check_one_feature_threshold_decides_and_chains_reshoots(shop, tmp_path):
    result = skimgfeat("duplicates", "--features", shop / "features" / "image_features_raw.parquet",
                       "--no-copy-check", "--threshold", "0.25", "--pairs", tmp_path / "pairs.csv")
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
