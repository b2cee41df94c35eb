"""ImageQualityFeatures: measures that move the right way, the embedder's inputs and errors, sklearn composition."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.utils._param_validation import InvalidParameterError
from test_cli import skimgfeat

from skimgfeat import CNNImageEmbedder, ImageLoadError, ImageQualityFeatures, ItemAggregator, RaggedPhotos
from skimgfeat.quality.measures import QUALITY_FEATURES, estimate_jpeg_quality


def features(table: pd.DataFrame, name: str) -> pd.Series:
    return table.set_index("image_name")[name]


@pytest.fixture(scope="module")
def altered_photos(tmp_path_factory, grocery_photos):
    """A real shop photo, a blurred and a darkened copy of it, another photo, and a cut-off file."""
    folder = tmp_path_factory.mktemp("quality")
    with Image.open(grocery_photos[0]) as opened:
        photo = opened.convert("RGB")
    photo.save(folder / "shop_1.jpg", quality=90)
    photo.filter(ImageFilter.GaussianBlur(3)).save(folder / "shop_2.jpg", quality=90)
    ImageEnhance.Brightness(photo).enhance(0.5).save(folder / "shop_3.jpg", quality=90)
    with Image.open(grocery_photos[50]) as other:
        other.convert("RGB").save(folder / "other_1.png")
    (folder / "broken_1.jpg").write_bytes((folder / "shop_1.jpg").read_bytes()[:2000])
    return folder


@pytest.mark.shared
def test_quality_command_measures_blur_darkness_and_reports_broken_files(altered_photos, tmp_path):
    result = skimgfeat("quality", altered_photos, "-o", tmp_path, "--pattern", "*_*.*")
    assert result.returncode == 0, result.stderr
    assert "5 images (1 failed)" in result.stdout
    raw = pd.read_parquet(tmp_path / "image_quality_raw.parquet")
    assert raw.columns.tolist() == ["image_path", "image_name", *QUALITY_FEATURES, "error"]
    sharpness, brightness = features(raw, "sharpness"), features(raw, "brightness")
    assert sharpness["shop_2.jpg"] < 0.5 * sharpness["shop_1.jpg"]
    assert brightness["shop_3.jpg"] < 0.7 * brightness["shop_1.jpg"]
    assert features(raw, "jpeg_quality")["shop_1.jpg"] == 90
    assert np.isnan(features(raw, "jpeg_quality")["other_1.png"])
    broken = raw.set_index("image_name").loc["broken_1.jpg"]
    assert broken[list(QUALITY_FEATURES)].isna().all()
    assert broken["error"].startswith("truncated")
    by_item = pd.read_parquet(tmp_path / "image_quality_by_item.parquet").set_index("item_id")
    assert by_item.index.tolist() == ["broken", "other", "shop"]
    assert by_item.loc["shop", "brightness"] == pytest.approx(brightness[["shop_1.jpg", "shop_2.jpg", "shop_3.jpg"]]
                                                              .mean())
    assert by_item.loc["broken"].isna().all()


@pytest.mark.shared
def test_strict_quality_run_exits_3_on_a_broken_file(altered_photos, tmp_path):
    result = skimgfeat("quality", altered_photos, "-o", tmp_path, "--pattern", "broken_*", "--strict", "-q")
    assert result.returncode == 3 and result.stdout == ""


def test_quality_of_a_missing_folder_exits_2_naming_it(tmp_path):
    result = skimgfeat("quality", tmp_path / "nowhere", "-o", tmp_path / "out")
    assert result.returncode == 2 and "nowhere" in result.stderr


def test_on_error_raise_names_the_file_and_nan_keeps_the_other_rows(synthetic_photos, tmp_path):
    broken = tmp_path / "cut.jpg"
    broken.write_bytes(synthetic_photos[0].read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        ImageQualityFeatures().fit().transform([synthetic_photos[0], broken])
    quality = ImageQualityFeatures(on_error="nan").fit()
    values = quality.transform([synthetic_photos[0], broken, None])
    assert values.shape == (3, 11) and values.dtype == np.float64
    assert np.isfinite(values[0]).all() and np.isnan(values[1:]).all()
    assert [error.reason for error in quality.errors_] == ["missing", "truncated"]


def test_size_file_size_and_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    Image.new("RGB", (300, 200), (120, 80, 40)).save(path, exif=exif, quality=37)
    values = dict(zip(QUALITY_FEATURES, ImageQualityFeatures().fit().transform([path])[0]))
    assert (values["width"], values["height"]) == (200, 300)
    assert values["aspect_ratio"] == pytest.approx(2 / 3)
    assert values["file_size"] == path.stat().st_size
    assert values["jpeg_quality"] == 37
    assert values["sharpness"] == pytest.approx(0, abs=1)
    assert values["colorfulness"] == pytest.approx(0.3 * np.hypot(120 - 80, 100 - 40), rel=0.05)  # flat: offset only


@pytest.mark.parametrize("quality", [5, 30, 50, 75, 95, 100])
def test_jpeg_quality_is_recovered_from_the_quantisation_tables(quality, tmp_path):
    path = tmp_path / "q.jpg"
    Image.new("RGB", (32, 32)).save(path, quality=quality)
    with Image.open(path) as image:
        assert estimate_jpeg_quality(image.quantization) == quality


def test_clipped_pixels_are_counted(tmp_path):
    pixels = np.zeros((100, 100, 3), dtype=np.uint8)
    pixels[:25] = 255
    pixels[25:50] = 128
    Image.fromarray(pixels).save(tmp_path / "half.png")
    values = dict(zip(QUALITY_FEATURES, ImageQualityFeatures().fit().transform([tmp_path / "half.png"])[0]))
    assert values["overexposed"] == pytest.approx(0.25, abs=0.02)
    assert values["underexposed"] == pytest.approx(0.5, abs=0.02)
    assert values["brightness"] == pytest.approx((0.25 * 255 + 0.25 * 128) / 255, abs=0.02)


def test_sklearn_protocol_and_pandas_output(synthetic_photos):
    quality = clone(ImageQualityFeatures(working_size=256, n_workers=2))
    assert quality.get_params()["working_size"] == 256
    column = pd.DataFrame({"photo": [str(p) for p in synthetic_photos[:3]]}, index=[10, 11, 12])
    table = quality.set_output(transform="pandas").fit_transform(column)
    assert table.columns.tolist() == list(QUALITY_FEATURES) and table.index.tolist() == [10, 11, 12]
    with pytest.raises(ValueError, match="working_size"):
        ImageQualityFeatures(working_size=0).fit()
    with pytest.raises(NotFittedError):
        ImageQualityFeatures().transform(column)
    restored = pickle.loads(pickle.dumps(quality))
    pd.testing.assert_frame_equal(restored.transform(column), table)


def test_several_photos_per_sample_stay_ragged_and_aggregate_per_item(synthetic_photos):
    items = [synthetic_photos[0:2], synthetic_photos[2:3]]
    quality = ImageQualityFeatures().fit()
    photos = quality.transform(items)
    # one row per photo (3), not items x largest item (4): memory follows the photos
    assert isinstance(photos, RaggedPhotos) and photos.values.shape == (3, 11)
    assert photos.counts.tolist() == [2, 1]
    np.testing.assert_array_equal(photos.values, quality.transform(list(synthetic_photos[0:3])))
    padded = np.asarray(photos)  # the padded array only when asked for
    assert padded.shape == (2, 2, 11) and np.isnan(padded[1, 1]).all()
    per_item = make_pipeline(ImageQualityFeatures(), ItemAggregator(method="mean")).fit_transform(items)
    np.testing.assert_allclose(per_item, np.nanmean(padded, axis=1))


def test_beside_the_embedder_in_a_feature_union_and_a_column_transformer(synthetic_photos):
    paths = [str(p) for p in synthetic_photos[:4]]
    embedder = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu", backend="eager")
    union = FeatureUnion([("cnn", embedder), ("quality", ImageQualityFeatures())]).fit(paths)
    values = union.transform(paths)
    names = union.get_feature_names_out()
    assert values.shape == (4, 1024 + 11)
    assert names[0] == "cnn__img_feature_0" and names[-1] == "quality__jpeg_quality"
    table = pd.DataFrame({"photo": paths, "price": [1.0, 2.0, 3.0, 4.0]})
    columns = ColumnTransformer([("quality", ImageQualityFeatures(), ["photo"]), ("tabular", "passthrough", ["price"])])
    out = columns.set_output(transform="pandas").fit_transform(table)
    assert out.columns[:2].tolist() == ["quality__sharpness", "quality__brightness"]
    assert out["tabular__price"].tolist() == [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(out.iloc[:, :11].to_numpy(), values[:, 1024:])


@pytest.mark.parametrize(
    ("param", "value"), [("working_size", 4), ("on_error", "zero"), ("max_pixels", -1), ("n_workers", 0)]
)
def test_invalid_parameters_fail_in_fit_naming_the_parameter(param, value):
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter of ImageQualityFeatures"):
        ImageQualityFeatures(**{param: value}).fit()
