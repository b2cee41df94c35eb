"""ItemAggregator turns several photos per item into one row per item."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skimgfeat import CNNImageEmbedder, ItemAggregator, RaggedPhotos, item_id_from_name

NAN = np.nan
PHOTOS = np.array(
    [
        [[1.0, 8.0], [3.0, 4.0], [NAN, NAN]],  # item 0: two photos
        [[NAN, NAN], [5.0, 2.0], [7.0, 6.0]],  # item 1: first photo failed to load
        [[NAN, NAN], [NAN, NAN], [NAN, NAN]],  # item 2: no photo loaded
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("mean", [[2.0, 6.0], [6.0, 4.0], [NAN, NAN]]),
        ("max", [[3.0, 8.0], [7.0, 6.0], [NAN, NAN]]),
        ("first", [[1.0, 8.0], [5.0, 2.0], [NAN, NAN]]),
    ],
)
def test_methods_ignore_failed_photos_and_keep_empty_items_as_nan(method, expected):
    result = ItemAggregator(method=method).fit_transform(PHOTOS)
    np.testing.assert_array_equal(result, np.asarray(expected, dtype=np.float32))
    assert result.dtype == np.float32


def test_no_warning_for_items_without_photos(recwarn):
    ItemAggregator().fit_transform(PHOTOS)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_count_images_adds_how_many_photos_loaded():
    aggregator = ItemAggregator(count_images=True).fit(PHOTOS)
    result = aggregator.transform(PHOTOS)
    np.testing.assert_array_equal(result[:, -1], [2, 2, 0])
    assert list(aggregator.get_feature_names_out()) == ["img_feature_0", "img_feature_1", "n_images"]


def test_two_dimensional_input_is_one_photo_per_item():
    rows = PHOTOS[:, 0, :]
    np.testing.assert_array_equal(ItemAggregator().fit_transform(rows), rows)


def test_pandas_output_has_feature_names():
    frame = ItemAggregator().set_output(transform="pandas").fit_transform(PHOTOS)
    assert list(frame.columns) == ["img_feature_0", "img_feature_1"]
    assert len(frame) == 3


@pytest.mark.parametrize(
    ("parameters", "named"),
    [({"method": "median"}, "method"), ({"item_id": 3}, "item_id"), ({"count_images": "yes"}, "count_images")],
)
def test_a_bad_parameter_is_refused_by_name_in_fit_and_in_a_transform_without_fit(parameters, named):
    aggregator = ItemAggregator(**parameters)
    with pytest.raises(InvalidParameterError, match=f"The '{named}' parameter of ItemAggregator must be"):
        aggregator.fit(PHOTOS)
    with pytest.raises(InvalidParameterError, match=f"The '{named}' parameter"):
        aggregator.transform(per_image_table())


def test_clone_keeps_parameters():
    aggregator = ItemAggregator(method="max", item_id=r"(?P<item>\d+)", count_images=True)
    assert clone(aggregator).get_params() == aggregator.get_params()


@pytest.mark.parametrize(
    ("name", "item"),
    [("84512_3.webp", "84512"), ("lot_2024_10.jpg", "lot_2024"), ("84512.webp", "84512"), ("a/b/9_1.png", "9")],
)
def test_item_id_is_the_stem_up_to_the_last_underscore(name, item):
    assert item_id_from_name(name) == item


def per_image_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_path": ["b/84512_10.webp", "84512_2.webp", "777_1.webp", "777_2.webp", "solo.webp"],
            "image_name": ["84512_10.webp", "84512_2.webp", "777_1.webp", "777_2.webp", "solo.webp"],
            "img_feature_0": [1.0, 3.0, 10.0, NAN, 5.0],
            "img_feature_1": [2.0, 4.0, 20.0, NAN, 6.0],
        }
    )


def test_per_image_table_gives_one_row_per_item_sorted_by_item_id():
    result = ItemAggregator(method="mean").fit_transform(per_image_table())
    assert list(result.columns) == ["item_id", "img_feature_0", "img_feature_1"]
    assert list(result["item_id"]) == ["777", "84512", "solo"]
    np.testing.assert_array_equal(result[["img_feature_0", "img_feature_1"]].to_numpy(), [[10, 20], [2, 3], [5, 6]])


def test_first_in_a_table_is_the_lowest_image_number_not_row_order():
    result = ItemAggregator(method="first").fit_transform(per_image_table())
    # 84512_2 comes before 84512_10 although the _10 row is listed first
    assert result.set_index("item_id").loc["84512"].tolist() == [3.0, 4.0]


def test_first_takes_the_first_photo_that_loaded_whole_in_a_table_as_in_an_array():
    # Photo 1 loaded but lacks one measure (the JPEG quality of a PNG); photo 2 has both.
    table = pd.DataFrame(
        {
            "image_name": ["9_2.jpg", "9_1.png", "4_1.png", "4_2.jpg", "5_1.png"],
            "sharpness": [20.0, 10.0, NAN, 30.0, NAN],
            "jpeg_quality": [90.0, NAN, NAN, 75.0, NAN],
        }
    )
    result = ItemAggregator(method="first", count_images=True).fit_transform(table).set_index("item_id")
    np.testing.assert_array_equal(result.loc["9"], [10.0, NAN, 2])  # photo 1 whole, not mixed with photo 2
    np.testing.assert_array_equal(result.loc["4"], [30.0, 75.0, 1])  # photo 1 failed to load: photo 2
    np.testing.assert_array_equal(result.loc["5"], [NAN, NAN, 0])  # no photo loaded
    photos = np.array([[[10.0, NAN], [20.0, 90.0]], [[NAN, NAN], [30.0, 75.0]], [[NAN, NAN], [NAN, NAN]]])
    same_items = result.loc[["9", "4", "5"], ["sharpness", "jpeg_quality"]]
    np.testing.assert_array_equal(ItemAggregator(method="first").fit_transform(photos), same_items)


def test_table_item_id_by_regex_or_callable():
    table = per_image_table()
    by_regex = ItemAggregator(item_id=r"^(\d+)").fit_transform(table[table.image_name != "solo.webp"])
    by_callable = ItemAggregator(item_id=lambda name: name[:3]).fit_transform(table)
    assert list(by_regex["item_id"]) == ["777", "84512"]
    assert list(by_callable["item_id"]) == ["777", "845", "sol"]


def test_table_with_an_item_id_column_uses_it():
    table = per_image_table().drop(columns=["image_path", "image_name"]).assign(item_id=["x", "x", "y", "y", "y"])
    result = ItemAggregator(method="max", count_images=True).fit_transform(table)
    assert result.to_dict("list") == {
        "item_id": ["x", "y"],
        "img_feature_0": [3.0, 10.0],
        "img_feature_1": [4.0, 20.0],
        "n_images": [2, 2],
    }


def test_only_decimal_suffixes_are_image_numbers():
    from skimgfeat.schema import image_number

    assert image_number("84512_10.webp") == (0, 10)
    assert image_number("84512_².webp") == (1, "²")  # a superscript digit is a name, not a number


def test_float64_input_keeps_its_precision_in_every_form():
    precise = np.array([[1.0 + 1e-12, 2.0]])
    assert ItemAggregator().fit_transform(precise)[0, 0] == 1.0 + 1e-12
    assert ItemAggregator().fit_transform(pd.DataFrame(precise))[0, 0] == 1.0 + 1e-12
    assert ItemAggregator().fit_transform(precise.tolist())[0, 0] == 1.0 + 1e-12


def test_refitting_on_an_array_forgets_the_names_of_a_table():
    aggregator = ItemAggregator().fit(per_image_table().drop(columns=["image_path", "image_name"]).assign(item_id="x"))
    assert hasattr(aggregator, "feature_names_in_")
    aggregator.fit(np.zeros((2, 3)))
    assert not hasattr(aggregator, "feature_names_in_")
    assert aggregator.get_feature_names_out().tolist() == ["img_feature_0", "img_feature_1", "img_feature_2"]


@pytest.mark.parametrize("count_images", [False, True])
def test_feature_names_out_are_the_columns_of_the_output(count_images):
    table = per_image_table()
    aggregator = ItemAggregator(count_images=count_images).fit(table)
    assert aggregator.get_feature_names_out().tolist() == aggregator.transform(table).columns.tolist()
    on_arrays = ItemAggregator(count_images=count_images).fit(PHOTOS)
    assert len(on_arrays.get_feature_names_out()) == on_arrays.transform(PHOTOS).shape[1]


@parametrize_with_checks([ItemAggregator(), ItemAggregator(method="max", count_images=True)])
def test_scikit_learn_common_checks(estimator, check):
    check(estimator)


def test_transform_refuses_another_feature_width():
    aggregator = ItemAggregator().fit(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="X has 5 features, but ItemAggregator is expecting 4"):
        aggregator.transform(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="X has 5 features"):
        aggregator.transform(np.zeros((2, 5)))


# -- items of very different sizes: the photos' rows, never items x the largest item --------


@pytest.fixture(scope="module")
def ragged_items(grocery_photos) -> list[list[str]]:
    """Five items of one real shop photo and one item of seven."""
    photos = [str(path) for path in grocery_photos[::40][:12]]
    return [[photo] for photo in photos[:5]] + [photos[5:]]


@pytest.fixture(scope="module")
def small_random_embedder():
    return CNNImageEmbedder(weights=None, random_state=0, resize_size=64, crop_size=64, backend="eager").fit()


def test_a_pipeline_on_items_of_one_and_of_seven_photos_gives_the_mean_of_each_items_photos(
    ragged_items, small_random_embedder
):
    pipeline = make_pipeline(clone(small_random_embedder), ItemAggregator("mean"))
    rows = pipeline.fit_transform(ragged_items)
    per_photo = small_random_embedder.transform([photo for item in ragged_items for photo in item])
    expected = np.vstack([per_photo[:5], per_photo[5:].astype(np.float64).mean(axis=0)])
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert rows.shape == (6, 1280)


def test_the_embedder_returns_the_photos_rows_and_pads_only_when_asked(ragged_items, small_random_embedder):
    features = small_random_embedder.transform(ragged_items)
    assert isinstance(features, RaggedPhotos)
    assert features.values.shape == (12, 1280)  # 12 photos, not 6 items x 7
    assert features.counts.tolist() == [1, 1, 1, 1, 1, 7]
    padded = np.asarray(features)  # asked for: the NaN-padded array
    assert padded.shape == features.shape == (6, 7, 1280)
    assert np.isnan(padded[0, 1:]).all() and not np.isnan(padded[5]).any()
    np.testing.assert_array_equal(padded[5], features[5])


@pytest.mark.parametrize("method", ["mean", "max", "first"])
def test_ragged_and_padded_photos_aggregate_alike(method):
    rng = np.random.default_rng(0)
    counts = [3, 0, 1, 5, 2]  # an item without a photo row too
    values = rng.normal(size=(sum(counts), 4)).astype(np.float32)
    values[1] = np.nan  # a photo that failed
    values[4, 2] = np.nan  # a feature one photo lacks
    values[5:10][[0, 1]] = np.nan
    photos = RaggedPhotos(values, np.concatenate([[0], np.cumsum(counts)]))
    ragged, padded = ItemAggregator(method, count_images=True), ItemAggregator(method, count_images=True)
    np.testing.assert_array_equal(ragged.fit_transform(photos), padded.fit_transform(np.asarray(photos)))
    # and the rows of selected items, as CrossFittedTransformer and cross-validation pick them
    np.testing.assert_array_equal(np.asarray(photos[[3, 0]]), np.asarray(photos)[[3, 0]])
