"""The pixel check of a copy: variants of one product design are not copies, a copy's edits do not matter.

Flavours of one carton design share its layout, lettering and grey tones: their hashes and
their keypoints agree, and only the colour of one region (the flavour's band, its fruit)
tells them apart. A copy is the same pixels up to one geometric and one photometric change
of the whole picture, so once aligned, every region of it agrees.
"""

from __future__ import annotations

import numpy as np
import pytest
from _copy_cases import FLAVOURS, mirrored, plain_fruit, product_variant, reencoded, with_border
from PIL import ImageEnhance

from skimgfeat.matching.copy_check import (
    MAX_PIXEL_DIFFERENCE,
    copy_distance,
    copy_thresholds,
    hash_photo,
    verify_copy,
)
from skimgfeat.matching.duplicates import copy_decision, is_confirmed_copy
from skimgfeat.matching.local_features import detect_local_features
from skimgfeat.matching.pixel_agreement import pixel_difference


def evidence(first, second, **kwargs):
    """(hashes, local features, the copy decision) of two image files."""
    hashes = [hash_photo(path) for path in (first, second)]
    features = [detect_local_features(path) for path in (first, second)]
    return hashes, features, copy_decision(*hashes, *features, photo_a=first, photo_b=second, **kwargs)


@pytest.fixture(scope="module")
def cartons(tmp_path_factory):
    """Each flavour's product shot, and copies of the orange one: resized and recompressed, darker, brighter, matted."""
    folder = tmp_path_factory.mktemp("cartons")
    for flavour in FLAVOURS:
        product_variant(flavour).save(folder / f"{flavour}.png")
    orange = product_variant("orange")
    reencoded(orange, 0.5).save(folder / "orange_resized.jpg", quality=35)
    ImageEnhance.Brightness(orange).enhance(0.75).save(folder / "orange_darker.jpg", quality=80)
    ImageEnhance.Brightness(orange).enhance(1.25).save(folder / "orange_brighter.jpg", quality=80)
    with_border(orange, 0.08).save(folder / "orange_matted.jpg", quality=85)
    mirrored(orange).save(folder / "orange_mirrored.jpg", quality=85)
    return folder


@pytest.mark.parametrize("first, second", [("orange", "raspberry"), ("apple", "blueberry"), ("blueberry", "orange")])
def test_two_flavours_of_one_carton_design_are_different_though_hashes_and_keypoints_agree(cartons, first, second):
    hashes, features, decision = evidence(cartons / f"{first}.png", cartons / f"{second}.png")
    # What the hashes and the keypoints see (grey levels): the same picture.
    assert copy_distance(*hashes) <= copy_thresholds(*hashes)
    assert verify_copy(*features).agrees
    # The pixels, once aligned: one region of another colour.
    assert not decision.copy
    assert decision.pixels.difference > MAX_PIXEL_DIFFERENCE
    assert "one region differs" in decision.reason


@pytest.mark.parametrize("copy", ["resized", "darker", "brighter", "matted", "mirrored"])
def test_a_copy_of_a_carton_stays_a_copy(cartons, copy):
    _, _, decision = evidence(cartons / "orange.png", cartons / f"orange_{copy}.jpg")
    assert decision.copy, decision
    assert decision.pixels.difference <= MAX_PIXEL_DIFFERENCE
    # either way round
    _, _, decision = evidence(cartons / f"orange_{copy}.jpg", cartons / "orange.png")
    assert decision.copy, decision


def test_a_recompressed_copy_of_another_flavour_is_different(cartons):
    hashes, features, decision = evidence(cartons / "orange_resized.jpg", cartons / "apple.png")
    assert copy_distance(*hashes) <= copy_thresholds(*hashes)
    assert not decision.copy


def test_without_keypoints_the_pixels_confirm_the_hashes(tmp_path):
    """A smooth fruit on white has too few keypoints for the content check: hashes and pixels decide."""
    plain_fruit("orange").save(tmp_path / "orange.png")
    reencoded(plain_fruit("orange"), 0.5).save(tmp_path / "orange_resized.jpg", quality=40)
    plain_fruit("raspberry").save(tmp_path / "raspberry.png")
    hashes, _, copy = evidence(tmp_path / "orange_resized.jpg", tmp_path / "orange.png")
    assert copy.copy and copy.reason.endswith("hashes and pixels decided"), copy
    hashes, _, other = evidence(tmp_path / "raspberry.png", tmp_path / "orange.png")
    assert copy_distance(*hashes) <= copy_thresholds(*hashes, confirmed=False)  # the hashes alone: a copy
    assert not other.copy and "one region differs" in other.reason
    # is_confirmed_copy (match, serve) decides as duplicates does
    features = [detect_local_features(tmp_path / name) for name in ("raspberry.png", "orange.png")]
    assert not is_confirmed_copy(*hashes, *features, photo_a=tmp_path / "raspberry.png",
                                 photo_b=tmp_path / "orange.png")


def test_pixel_difference_sees_one_changed_block_and_ignores_a_global_exposure_change():
    rng = np.random.default_rng(1)
    photo = np.repeat(np.repeat(rng.uniform(20, 200, (8, 10, 3)), 24, axis=0), 24, axis=1)
    shift = np.array([[1.0, 0, -16], [0, 1.0, -8]])  # the copy is cropped by 16 and 8 pixels
    copy = photo[8:, 16:] * 1.2 + 5
    assert pixel_difference(photo, copy, shift).difference < MAX_PIXEL_DIFFERENCE / 4
    changed = copy.copy()
    changed[40:80, 60:110] = changed[40:80, 60:110][..., ::-1]  # one region in other colours
    assert pixel_difference(photo, changed, shift).difference > 3 * MAX_PIXEL_DIFFERENCE / 2
