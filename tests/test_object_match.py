"""The same object in new photos: local features, verification and ``skimgfeat match`` on real DVD-case photos."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from _scenes import on_background
from conftest import SHARED, _require
from PIL import Image
from test_cli import skimgfeat

from skimgfeat import LocalFeatureStore, ObjectMatcher, add_same_object_verdicts, verify_pair, write_local_features
from skimgfeat.matching.local_features import MissingLocalFeaturesError, detect_local_features
from skimgfeat.matching.object_match import verdict
from skimgfeat.matching.verification import DEFAULT_MIN_GUIDED_INLIERS, DEFAULT_MIN_INLIERS, is_same_object

pytest.importorskip("cv2", reason="object matching needs OpenCV (the match extra)")

OBJECTS = SHARED / "images" / "objects"
HOUSES = SHARED / "images" / "houses"


@pytest.fixture(scope="module")
def objects_dir():
    """Photos of 50 DVD cases, five each (a clean cover and four phone photos in cluttered scenes)."""
    return _require(OBJECTS)


def read_csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"item_id": str})


# -- verification on real photos ---------------------------------------------------------------------------------------


@pytest.mark.shared
def test_a_phone_photo_matches_its_own_case_and_not_another_case(objects_dir):
    phone = detect_local_features(objects_dir / "dvd001_canon.jpg")
    own_cover = detect_local_features(objects_dir / "dvd001_reference.jpg")
    own_other_phone = detect_local_features(objects_dir / "dvd001_e63.jpg")
    other_case = detect_local_features(objects_dir / "dvd002_canon.jpg")
    assert 0 < len(phone) <= 1000 and phone.descriptors.shape[1] == 64  # AKAZE's 61 bytes, padded
    for same in (own_cover, own_other_phone):
        assert verdict(verify_pair(phone, same)) == "same_object"
    check = verify_pair(phone, other_case)
    assert verdict(check) == "different" and not is_same_object(check)


@pytest.mark.shared
def test_another_case_on_the_same_background_is_not_a_match(objects_dir):
    backdrop = _require(HOUSES) / "1_kitchen.jpg"
    first = detect_local_features(on_background(objects_dir / "dvd001_reference.jpg", backdrop))
    second = detect_local_features(on_background(objects_dir / "dvd002_reference.jpg", backdrop))
    shared_backdrop = verify_pair(first, second)
    assert shared_backdrop.inliers > 0  # the backdrop itself does match...
    assert not is_same_object(shared_backdrop)  # ...but it is not the object
    assert is_same_object(verify_pair(first, detect_local_features(objects_dir / "dvd001_canon.jpg")))


@pytest.mark.shared
def test_a_clean_object_sized_match_passes_where_the_centre_rules_do_not(objects_dir):
    # dvd047 photographed off-centre: the centre of neither photo matches as well as the whole of it.
    pair = verify_pair(detect_local_features(objects_dir / "dvd047_canon.jpg"),
                       detect_local_features(objects_dir / "dvd047_droid.jpg"))
    assert pair.centred < 1.0 and pair.inliers >= 0.8 * pair.n_matches and 0.1 <= pair.spread <= 0.2
    assert is_same_object(pair) and verdict(pair) == "same_object"
    assert not is_same_object(pair, min_inlier_share=None, min_guided_inliers=None)  # the centre rules alone do not


@pytest.mark.shared
def test_matching_again_guided_by_the_homography_finds_a_small_object_and_not_the_next_one(objects_dir):
    # dvd012 small in one photo: the first match has no inlier in the central third of one photo and a hull of
    # 3 % (too small for a clean object-sized match): the first two ways turn it away.
    phone = detect_local_features(objects_dir / "dvd012_droid.jpg")
    pair = verify_pair(phone, detect_local_features(objects_dir / "dvd012_e63.jpg"))
    assert pair.central_inliers < 2 and pair.spread < 0.06
    assert not is_same_object(pair, min_guided_inliers=None)
    # Projected by the homography, keypoints the ratio test had dropped find their partners: around both centres.
    assert pair.guided.inliers >= max(DEFAULT_MIN_GUIDED_INLIERS, 1.5 * pair.inliers) and pair.guided.covers_centres
    assert is_same_object(pair) and verdict(pair) == "same_object"
    assert verify_pair(phone, detect_local_features(objects_dir / "dvd012_e63.jpg"), guided_radius=None).guided \
        is None
    # A stack of cases: dvd004 at the centre, the next case (dvd005) beside it. The guided match of dvd005 is
    # just as rich, but it lies beside the centre of the photo of dvd004: not the object photographed.
    next_case = verify_pair(detect_local_features(objects_dir / "dvd004_palm.jpg"),
                            detect_local_features(objects_dir / "dvd005_palm.jpg"))
    assert next_case.guided.inliers >= 2 * DEFAULT_MIN_GUIDED_INLIERS and not next_case.guided.covers_centres
    assert not is_same_object(next_case)


@pytest.mark.shared
def test_a_large_jpeg_decoded_at_reduced_scale_matches_in_its_own_pixels(objects_dir, tmp_path):
    with Image.open(objects_dir / "dvd010_canon.jpg") as opened:
        photo = opened.convert("RGB")
    large = tmp_path / "dvd010_canon_1600.jpg"  # what phones give: twice the shared photo's size
    photo.resize((photo.width * 2, photo.height * 2), Image.LANCZOS).save(large, quality=90)
    reference = detect_local_features(objects_dir / "dvd010_reference.jpg")
    as_shared, as_large = detect_local_features(objects_dir / "dvd010_canon.jpg"), detect_local_features(large)
    assert as_large.image_size == as_shared.image_size == (512, 384)  # the same detection frame
    assert as_large.scale == pytest.approx(as_shared.scale / 2)  # against 1600 px, not the decoded 800 px
    checks = [verify_pair(features, reference) for features in (as_shared, as_large)]
    assert [verdict(check) for check in checks] == ["same_object", "same_object"]
    # the inliers in each photo's own pixels: where the case is in the large photo, twice as far from the corner
    np.testing.assert_allclose(np.median(checks[1].points_a, 0), 2 * np.median(checks[0].points_a, 0), rtol=0.1)


def test_a_blank_wall_or_a_tiny_thumbnail_has_no_inliers_and_is_different():
    rng = np.random.default_rng(0)
    wall = np.full((480, 640), 200, np.uint8)
    thumbnail = (rng.random((12, 16)) * 255).astype(np.uint8)
    texture = (rng.random((240, 320)) * 255).astype(np.uint8)
    for plain in (wall, thumbnail):
        features = detect_local_features(plain)
        assert len(features) < 10
        check = verify_pair(features, detect_local_features(texture))
        assert check.inliers == 0 and verdict(check) == "different"


# -- the sidecar ---------------------------------------------------------------------------------------------------


@pytest.mark.shared
def test_local_features_are_stored_once_and_a_changed_photo_is_computed_again(objects_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("dvd003_canon.jpg", "dvd003_palm.jpg", "dvd004_canon.jpg"):
        shutil.copy(objects_dir / name, photos / name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    paths = sorted(photos.iterdir())
    folder = tmp_path / "out" / "local_features"
    assert write_local_features(paths, folder, image_dir=photos, part_size=2) == 4
    assert write_local_features(paths, folder, image_dir=photos) == 1  # only the unreadable one is tried again
    os.utime(photos / "dvd003_palm.jpg", ns=(0, 0))
    assert write_local_features(paths, folder, image_dir=photos) == 2
    store = LocalFeatureStore(folder)
    assert sorted(store.paths()) == sorted(path.name for path in paths)
    assert store["broken.jpg"].error.startswith("truncated") and len(store["broken.jpg"]) == 0
    stored = store["dvd003_canon.jpg"]
    fresh = detect_local_features(photos / "dvd003_canon.jpg")
    np.testing.assert_array_equal(stored.descriptors, fresh.descriptors)
    assert is_same_object(verify_pair(stored, store["dvd003_palm.jpg"]))
    with pytest.raises(ValueError, match="other settings"):
        write_local_features(paths, folder, image_dir=photos, max_keypoints=100)


def test_a_missing_sidecar_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(MissingLocalFeaturesError, match="skimgfeat extract .*--local-features"):
        LocalFeatureStore(tmp_path / "local_features")


@pytest.mark.parametrize("version, max_keypoints", [(1, 500), (2, 1000)])
def test_a_sidecar_of_an_older_format_is_refused_naming_the_command(tmp_path, version, max_keypoints):
    """Versions 1 and 2 stored ORB keypoints, which AKAZE's cannot be matched with: made again, not used."""
    folder = tmp_path / "local_features"
    folder.mkdir()
    (folder / "settings.json").write_text(f'{{"format_version": {version}, "detector": "orb", '
                                          f'"max_keypoints": {max_keypoints}, "max_side": 640}}')
    with pytest.raises(MissingLocalFeaturesError,
                       match=f"format version {version}.*skimgfeat extract .*--local-features"):
        LocalFeatureStore(folder)
    with pytest.raises(ValueError, match=f"format version {version}"):
        write_local_features([], folder)


# -- the command and the matcher -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lots(tmp_path_factory, objects_dir, shared_weights):
    """Three DVD cases (dvd001's palm photo held out as a query), a blank wall and a tiny thumbnail of another
    case, extracted with local features; outside the folder, a resized recompressed copy of dvd002_canon."""
    root = tmp_path_factory.mktemp("match")
    photos = root / "photos"
    photos.mkdir()
    for path in sorted(objects_dir.glob("dvd00[123]_*.jpg")):
        if path.name != "dvd001_palm.jpg":
            shutil.copy(path, photos / path.name)
    Image.new("RGB", (640, 480), (205, 200, 190)).save(photos / "wall_1.jpg")
    with Image.open(objects_dir / "dvd010_canon.jpg") as opened:  # a case not in the table
        opened.convert("RGB").resize((24, 18)).save(photos / "thumb_1.jpg")
    with Image.open(objects_dir / "dvd002_canon.jpg") as opened:
        copy = opened.convert("RGB")
    copy.resize((copy.width * 3 // 4, copy.height * 3 // 4)).save(root / "copy.jpg", quality=75)
    output = root / "features"
    result = skimgfeat("extract", photos, "-o", output, "--pattern", "*.jpg", "--local-features", "-q",
                       "--aggregate", "none", env={"SKIMGFEAT_WEIGHTS": str(shared_weights)}, timeout=900)
    assert result.returncode == 0, result.stderr
    assert (output / "local_features" / "settings.json").is_file()
    return root, output


@pytest.mark.shared
def test_match_gives_copy_same_object_and_different_verdicts(lots, objects_dir, shared_weights):
    root, output = lots
    query, copy = objects_dir / "dvd001_palm.jpg", root / "copy.jpg"
    sheet = root / "matches.png"
    result = skimgfeat("match", query, copy, "--against", output, "-k", "20", "--sheet", sheet,
                       "--weights", shared_weights)
    assert result.returncode == 0, result.stderr
    found = read_csv(result.stdout)
    assert found.columns.tolist() == ["query", "rank", "image_path", "feature_distance", "inliers", "verdict"]
    new_photo = found[found["query"] == str(query)]
    assert len(new_photo) == 16 and new_photo["rank"].tolist() == list(range(1, 17))
    own = new_photo["image_path"].str.startswith("dvd001_")
    verified = new_photo["verdict"] == "same_object"
    assert own.sum() == 4 and (verified & own).sum() >= 3 and not (verified & ~own).any()
    assert verified.iloc[:verified.sum()].all()  # verified matches rank first, by inliers
    assert (new_photo[verified]["inliers"].diff().dropna() <= 0).all()
    copied = found[found["query"] == str(copy)].iloc[0]
    assert (copied["image_path"], copied["verdict"]) == ("dvd002_canon.jpg", "copy")
    with Image.open(sheet) as drawn:
        assert drawn.format == "PNG" and drawn.width > drawn.height / 8


@pytest.mark.shared
def test_a_blank_wall_and_a_thumbnail_in_the_table_match_nothing(lots):
    _, output = lots
    result = skimgfeat("match", "wall_1.jpg", "thumb_1.jpg", "--against", output / "image_features_raw.parquet")
    assert result.returncode == 0, result.stderr
    found = read_csv(result.stdout)
    assert len(found) == 2 * 15 and set(found["verdict"]) == {"different"}


@pytest.mark.shared
def test_by_item_an_item_matches_when_any_of_its_photos_does(lots, objects_dir, shared_weights):
    root, output = lots
    result = skimgfeat("match", objects_dir / "dvd001_palm.jpg", "--against", output, "--by-item",
                       "--weights", shared_weights)
    assert result.returncode == 0, result.stderr
    found = read_csv(result.stdout)
    assert found.columns.tolist()[:4] == ["query", "rank", "item_id", "image_path"]
    best = found.iloc[0]
    assert (best["item_id"], best["verdict"]) == ("dvd001", "same_object")
    assert best["image_path"].startswith("dvd001_")
    assert set(found.iloc[1:]["verdict"]) == {"different"}


@pytest.mark.shared
def test_without_local_features_match_exits_2_naming_the_command(lots, tmp_path):
    _, output = lots
    shutil.copy(output / "image_features_raw.parquet", tmp_path / "image_features_raw.parquet")
    result = skimgfeat("match", "dvd002_canon.jpg", "--against", tmp_path / "image_features_raw.parquet")
    assert result.returncode == 2
    assert "skimgfeat extract" in result.stderr and "--local-features" in result.stderr


@pytest.mark.shared
def test_the_matcher_and_pair_verdicts_from_python(lots):
    _, output = lots
    matcher = ObjectMatcher.read(output / "image_features_raw.parquet", k=5)
    found = matcher.match(["dvd003_canon.jpg"])
    assert found["image_path"].iloc[0].startswith("dvd003_") and found["verdict"].iloc[0] == "same_object"
    pairs = pd.DataFrame({"image_a": ["dvd002_e63.jpg", "dvd002_e63.jpg", "wall_1.jpg", "dvd003_e63.jpg"],
                          "image_b": ["dvd002_droid.jpg", "dvd003_e63.jpg", "thumb_1.jpg", "dvd003_canon.jpg"],
                          "verdict": ["different", "different", "different", "copy"]})  # as duplicate_pairs says
    verdicts = add_same_object_verdicts(pairs, matcher.local_features)
    assert verdicts["verdict"].tolist() == ["same_object", "different", "different", "copy"]
    assert verdicts["inliers"].iloc[0] >= DEFAULT_MIN_INLIERS and verdicts["inliers"].iloc[2] == 0


@pytest.mark.shared
def test_duplicates_tells_re_photographed_objects_from_copies_with_local_features(lots):
    """Beside the table, local features turn the candidate pairs that are not copies into same_object or
    different; groups stay made of copies only."""
    root, output = lots
    pairs_file = root / "pairs.csv"
    result = skimgfeat("duplicates", "--features", output / "image_features_raw.parquet", "--threshold", "0.6",
                       "--pairs", pairs_file)
    assert result.returncode == 0, result.stderr
    pairs = pd.read_csv(pairs_file)
    assert {"inliers", "verdict"} <= set(pairs.columns)
    case = pairs["image_a"].str[:6].where(pairs["image_a"].str.startswith("dvd"))
    same_case = case.notna() & case.eq(pairs["image_b"].str[:6])
    assert (pairs.loc[same_case, "verdict"] == "same_object").any()
    assert (pairs.loc[~same_case, "verdict"] != "same_object").all()
    groups = read_csv(result.stdout)
    assert groups.empty  # no two photos of the folder are copies of one picture
