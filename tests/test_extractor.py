"""The original module's API: ImageFeatureExtractor and aggregate_features_by_item."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skimgfeat import (
    CNNImageEmbedder,
    ImageFeatureExtractor,
    ImageLoadError,
    ItemAggregator,
    aggregate_features_by_item,
)
from skimgfeat.storage.io import read_model_info, read_table

FEATURES = [f"img_feature_{i}" for i in range(1280)]


@pytest.fixture(scope="module")
def extractor() -> ImageFeatureExtractor:
    return ImageFeatureExtractor(weights=None, random_state=0, device="cpu")


@pytest.fixture
def photo_dir(tmp_path, synthetic_photos):
    """item0_1 ... item2_2 as WebP, a sub-folder with one more, and files that are no WebP.

    The folder's name has spaces, quotes and non-ASCII characters: they must work everywhere.
    """
    folder = tmp_path / "photos d'été \"2024\""
    (folder / "nested").mkdir(parents=True)
    for path in synthetic_photos:
        Image.open(path).save(folder / f"{path.stem}.webp")
    Image.open(synthetic_photos[0]).save(folder / "nested" / "item9_1.webp")
    shutil.copy(synthetic_photos[0], folder / "item0_1.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_directory_table_has_the_original_columns_in_sorted_order(extractor, photo_dir):
    table = extractor.extract_features_from_directory(photo_dir, pattern="*.webp")
    assert list(table.columns) == ["image_path", "image_name", *FEATURES]
    assert list(table.image_name) == ["item0_1.webp", "item0_2.webp", "item1_1.webp", "item1_2.webp",
                                      "item2_1.webp", "item2_2.webp"]
    assert list(table.image_path) == list(table.image_name)  # relative to the folder
    assert table[FEATURES].dtypes.unique().tolist() == [np.float32]


def test_sub_folders_are_searched_only_when_asked(extractor, photo_dir):
    assert "nested/item9_1.webp" not in set(extractor.extract_features_from_directory(photo_dir).image_path)
    table = extractor.extract_features_from_directory(photo_dir, recursive=True)
    assert "nested/item9_1.webp" in set(table.image_path)
    assert table.image_path.tolist() == sorted(table.image_path)


def test_max_images_keeps_the_first_files_in_sorted_order(extractor, photo_dir):
    table = extractor.extract_features_from_directory(photo_dir, max_images=2)
    assert table.image_name.tolist() == ["item0_1.webp", "item0_2.webp"]


def test_features_equal_the_embedders_on_the_same_files(extractor, photo_dir):
    table = extractor.extract_features_from_directory(photo_dir)
    paths = [str(photo_dir / name) for name in table.image_path]
    expected = CNNImageEmbedder(weights=None, random_state=0, device="cpu").fit().transform(paths)
    np.testing.assert_array_equal(table[FEATURES].to_numpy(), expected)
    np.testing.assert_array_equal(extractor.extract_features_from_image(paths[2]), expected[2])


@pytest.mark.shared
def test_real_weights_give_the_embedders_features(shared_weights, grocery_photos):
    photos = grocery_photos[:4]
    extractor = ImageFeatureExtractor(weights=shared_weights, device="cpu")
    single = np.stack([extractor.extract_features_from_image(path) for path in photos])
    expected = CNNImageEmbedder(weights=shared_weights, device="cpu").fit().transform(photos)
    assert single.shape == (4, 1280)
    np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-6)


def test_shufflenet_gives_1024_features(synthetic_photos):
    extractor = ImageFeatureExtractor("shufflenet_v2_x1_0", weights=None, random_state=0, device="cpu")
    assert extractor.extract_features_from_image(synthetic_photos[0]).shape == (1024,)


def test_a_broken_file_raises_or_becomes_a_nan_row_with_its_error(extractor, photo_dir):
    (photo_dir / "item3_1.webp").write_bytes(b"RIFF\x00\x00")
    with pytest.raises(ImageLoadError, match="item3_1.webp"):
        extractor.extract_features_from_directory(photo_dir)
    lenient = ImageFeatureExtractor(weights=None, random_state=0, on_error="nan")
    table = lenient.extract_features_from_directory(photo_dir).set_index("image_name")
    assert table.loc["item3_1.webp", FEATURES].isna().all()
    assert "item3_1.webp" in table.loc["item3_1.webp", "error"]
    assert (table.drop(index="item3_1.webp").error == "").all()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_save_features_round_trips_atomically_into_new_folders(extractor, photo_dir, tmp_path, suffix):
    table = extractor.extract_features_from_directory(photo_dir)
    output = tmp_path / "new" / "deeper" / f"features{suffix}"
    assert extractor.save_features(table, output) == output
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name]  # no temporary file left behind
    np.testing.assert_allclose(read_table(output)[FEATURES].to_numpy(), table[FEATURES].to_numpy(), rtol=1e-6)
    assert read_table(output).image_path.tolist() == table.image_path.tolist()


def test_the_parquet_file_carries_the_model_info(extractor, photo_dir, tmp_path):
    output = extractor.save_features(extractor.extract_features_from_directory(photo_dir), tmp_path / "f.parquet")
    info = read_model_info(output)
    assert info["model_name"] == "mobilenet_v2"
    assert info["n_features"] == 1280
    assert info["weights"] == "random"


def test_save_features_refuses_an_unknown_suffix(extractor, tmp_path):
    with pytest.raises(ValueError, match=r"\.parquet or \.csv"):
        extractor.save_features(pd.DataFrame({"a": [1]}), tmp_path / "features.xlsx")
    assert not (tmp_path / "features.xlsx").exists()


def test_save_model_info_writes_what_made_the_features(extractor, tmp_path):
    info = json.loads(extractor.save_model_info(tmp_path / "run").read_text())
    assert info["model_name"] == "mobilenet_v2"
    assert info["n_features"] == 1280
    assert info["input_size"] == [3, 224, 224]
    assert info["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert info["device"] == "cpu"
    assert {"torch", "torchvision", "skimgfeat"} <= set(info["versions"])
    assert "weights_sha256" in info and "date" in info


# -- aggregate_features_by_item ------------------------------------------------------

PHOTOS = pd.DataFrame(
    {
        "image_path": ["84512_10.webp", "84512_2.webp", "84512_3.webp", "7.webp", "lot_2024_1.webp"],
        "image_name": ["84512_10.webp", "84512_2.webp", "84512_3.webp", "7.webp", "lot_2024_1.webp"],
        "img_feature_0": [1.0, 2.0, 6.0, 5.0, 8.0],
        "img_feature_1": [0.0, 4.0, np.nan, 1.0, 9.0],
    }
)


def test_items_come_from_the_file_stem_up_to_the_last_underscore():
    table = aggregate_features_by_item(PHOTOS)
    assert table.columns.tolist() == ["item_id", "img_feature_0", "img_feature_1"]
    assert table.item_id.tolist() == ["7", "84512", "lot_2024"]
    assert table.set_index("item_id").loc["84512"].tolist() == [3.0, 2.0]


def test_max_and_first_where_first_is_the_lowest_image_number():
    assert aggregate_features_by_item(PHOTOS, "max").set_index("item_id").loc["84512"].tolist() == [6.0, 4.0]
    assert aggregate_features_by_item(PHOTOS, "first").set_index("item_id").loc["84512"].tolist() == [2.0, 4.0]


def test_item_id_can_be_a_regex_or_a_callable():
    by_regex = aggregate_features_by_item(PHOTOS, item_id=r"^(\d+|lot)")
    assert by_regex.item_id.tolist() == ["7", "84512", "lot"]
    by_callable = aggregate_features_by_item(PHOTOS, item_id=lambda name: name[0])
    assert by_callable.item_id.tolist() == ["7", "8", "l"]


def test_it_is_the_item_aggregator():
    expected = ItemAggregator(method="max").fit_transform(PHOTOS)
    pd.testing.assert_frame_equal(aggregate_features_by_item(PHOTOS, method="max"), expected)


def test_by_item_features_merge_with_other_item_features_on_item_id():
    listings = pd.DataFrame({"item_id": ["84512", "7", "999"], "price": [12.5, 3.0, 8.0]})
    merged = listings.merge(aggregate_features_by_item(PHOTOS), on="item_id", how="left")
    assert merged.columns.tolist() == ["item_id", "price", "img_feature_0", "img_feature_1"]
    assert merged.img_feature_0.tolist()[:2] == [3.0, 5.0]
    assert np.isnan(merged.img_feature_0.iloc[2])  # an item without photos keeps its row


def test_item_id_naming_an_existing_column_uses_that_column():
    table = PHOTOS.assign(item_id=["a", "a", "b", "b", "b"])
    assert aggregate_features_by_item(table, item_id="item_id").item_id.tolist() == ["a", "b"]
    # a derived item_id replaces a stale column instead of competing with it
    assert aggregate_features_by_item(table, item_id=r"^(\d+|lot)").item_id.tolist() == ["7", "84512", "lot"]
