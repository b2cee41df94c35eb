"""Similar items and duplicate photos: the API on small tables, the commands on real photos with real weights."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance
from test_cli import skimgfeat

from skimgfeat import SimilarityIndex, embedder_from_model_info, find_duplicates, similar_items
from skimgfeat.plotting.contact_sheet import contact_sheet

# -- the API --------------------------------------------------------------------------


def test_search_ranks_by_cosine_distance_and_excludes_the_query_itself():
    vectors = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # a and b point the same way
    index = SimilarityIndex(["a", "b", "c", "d"], vectors)
    result = index.similar(["a", "d"], k=2)
    assert result.columns.tolist() == ["query", "rank", "image_path", "distance"]
    assert result[result["query"] == "a"]["image_path"].tolist() == ["b", "c"]  # b at distance 0, not a itself
    assert result[result["query"] == "d"]["image_path"].tolist()[0] == "c"  # then a or b: a tie at distance 1
    np.testing.assert_allclose(result["distance"], [0.0, 1 - np.sqrt(0.5), 1 - np.sqrt(0.5), 1.0], atol=1e-6)
    assert result["rank"].tolist() == [1, 2, 1, 2]


def test_rows_of_failed_photos_are_left_out_and_k_is_capped():
    table = pd.DataFrame({"image_path": ["a.jpg", "bad.jpg", "c.jpg"], "img_feature_0": [1.0, np.nan, 0.5],
                          "img_feature_1": [0.0, np.nan, 0.5], "error": ["", "truncated", ""]})
    index = SimilarityIndex.from_table(table)
    assert index.names.tolist() == ["a.jpg", "c.jpg"] and index.n_skipped == 1
    assert index.similar(["a.jpg"], k=10)["image_path"].tolist() == ["c.jpg"]
    with pytest.raises(KeyError, match="bad.jpg"):
        index.similar(["bad.jpg"])


def test_by_item_averages_a_raw_table_and_shows_each_item_by_its_first_photo():
    table = pd.DataFrame({"image_path": ["7_2.jpg", "7_1.jpg", "8_1.jpg"], "img_feature_0": [1.0, 0.0, 1.0],
                          "img_feature_1": [0.0, 1.0, 1.0]})
    index = SimilarityIndex.from_table(table, by_item=True, image_dir="photos")
    assert index.key == "item_id" and index.names.tolist() == ["7", "8"]
    np.testing.assert_allclose(index.vector("7"), [0.5, 0.5])
    assert index.photo_path("7").as_posix() == "photos/7_1.jpg"
    assert index.similar(["8"], k=1).columns.tolist() == ["query", "rank", "item_id", "distance"]


def test_duplicates_are_connected_components_numbered_in_table_order():
    angles = np.radians([0, 10, 20, 90, 95, 180])  # 0~10~20 chain, 90~95, 180 alone
    vectors = np.column_stack([np.cos(angles), np.sin(angles)]) + 2.0  # positive, like ReLU features
    index = SimilarityIndex(["a", "b", "c", "d", "e", "f"], vectors)
    pair = 1 - np.cos(np.radians(10))
    groups = find_duplicates(SimilarityIndex(["a", "b", "c", "d", "e", "f"], np.column_stack(
        [np.cos(angles), np.sin(angles)])), threshold=pair * 1.01)
    assert groups.columns.tolist() == ["group", "image_path", "chained"]
    assert groups.values.tolist() == [[0, "a", True], [0, "b", True], [0, "c", True], [1, "d", False],
                                      [1, "e", False]]  # a~c only through b: a chain
    assert find_duplicates(index, threshold=0.0).empty
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(index, threshold=-0.1)


def test_embedder_from_model_info_uses_the_recorded_parameters_with_other_weights():
    params = {"model_name": "resnet18", "weights": "IMAGENET1K_V1", "resize_mode": "shorter_side", "draft": True,
              "a_parameter_of_a_newer_version": 1}
    embedder = embedder_from_model_info({"params": params, "model_name": "resnet18"}, weights="local.pth")
    chosen = embedder.get_params()
    assert (chosen["model_name"], chosen["weights"], chosen["resize_mode"], chosen["draft"]) == (
        "resnet18", "local.pth", "shorter_side", True)
    older = embedder_from_model_info({"model_name": "resnet18", "weights": "IMAGENET1K_V1",
                                      "preprocessing": {"resize_mode": "shorter_side"}})
    assert older.get_params()["resize_mode"] == "shorter_side" and older.get_params()["weights"] == "IMAGENET1K_V1"
    with pytest.raises(ValueError, match="no model info"):
        embedder_from_model_info({})


def test_a_file_inside_the_photo_folder_is_its_row_of_the_table(synthetic_photos):
    folder = synthetic_photos[0].parent
    names = [path.name for path in synthetic_photos[:3]]
    index = SimilarityIndex(names, np.eye(3) + 0.1, image_dir=folder)  # no model info: nothing can be embedded
    found = similar_items(index, [synthetic_photos[0]], k=2)
    assert found["query"].iloc[0] == str(synthetic_photos[0])
    assert names[0] not in set(found["image_path"])


def test_a_query_that_is_neither_a_file_nor_a_row_is_refused():
    index = SimilarityIndex(["a", "b"], np.eye(2))
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        similar_items(index, ["nowhere.jpg"])


# -- the commands on real photos ------------------------------------------------------


def save_copy(source: Image.Image, target, *, scale: float = 1.0, quality: int = 90, crop: float = 1.0,
              exposure: float = 1.0) -> None:
    """A near-duplicate of ``source``: cropped (keep ``crop`` of each side), scaled, re-exposed, recompressed."""
    width, height = source.size
    keep_w, keep_h = round(width * crop), round(height * crop)
    image = source.crop((width - keep_w, 0, width, keep_h))  # off centre
    image = image.resize((max(1, round(keep_w * scale)), max(1, round(keep_h * scale))), Image.Resampling.BICUBIC)
    ImageEnhance.Brightness(image).enhance(exposure).save(target, format="JPEG", quality=quality)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, imagenet_dir, grocery_photos, shared_weights):
    """Ten distinct real photos (items lot0..lot9), two with a near-duplicate, extracted with the real weights.

    Outside the folder: a resized and recompressed copy of lot4's photo, the query.
    """
    root = tmp_path_factory.mktemp("similar")
    folder = root / "photos"
    folder.mkdir()
    large = [path for path in sorted(imagenet_dir.glob("*.JPEG")) if min(Image.open(path).size) >= 300]
    sources = large[:7] + grocery_photos[::600][:3]
    photos = []
    for number, source in enumerate(sources):
        with Image.open(source) as opened:
            photo = opened.convert("RGB")
        photo.thumbnail((512, 512))
        photo.save(folder / f"lot{number}_1.jpg", quality=92)
        photos.append(photo)
    save_copy(photos[0], folder / "lot0_2.jpg", scale=0.7, quality=70)
    save_copy(photos[8], folder / "lot8_2.jpg", crop=0.93, exposure=1.2)
    save_copy(photos[4], root / "query.jpg", scale=0.5, quality=40)
    output = root / "features"
    result = skimgfeat("extract", folder, "-o", output, "--pattern", "*.jpg", "-q",
                       env={"SKIMGFEAT_WEIGHTS": str(shared_weights)})
    assert result.returncode == 0, result.stderr
    return root, output


def read_csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"item_id": str})


@pytest.mark.shared
def test_a_resized_recompressed_copy_finds_its_original_first(catalogue, shared_weights):
    root, output = catalogue
    sheet = root / "sheet.png"
    result = skimgfeat("similar", root / "query.jpg", "lot0_1.jpg", "--features", output / "image_features_raw.parquet",
                       "-k", "3", "--sheet", sheet, "--weights", shared_weights)
    assert result.returncode == 0, result.stderr
    found = read_csv(result.stdout)
    assert found.columns.tolist() == ["query", "rank", "image_path", "distance"]
    assert len(found) == 6 and found["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    by_query = dict(tuple(found.groupby("query")))
    assert by_query[str(root / "query.jpg")]["image_path"].iloc[0] == "lot4_1.jpg"
    assert by_query["lot0_1.jpg"]["image_path"].iloc[0] == "lot0_2.jpg"  # itself left out
    assert "lot0_1.jpg" not in set(by_query["lot0_1.jpg"]["image_path"])
    assert (found.groupby("query")["distance"].diff().dropna() >= 0).all()
    with Image.open(sheet) as drawn:
        assert drawn.format == "PNG" and drawn.width == 4 * 160 and drawn.height > 2 * 160


@pytest.mark.shared
def test_similar_items_by_item_table(catalogue, shared_weights):
    root, output = catalogue
    result = skimgfeat("similar", root / "query.jpg", "lot8", "--by-item", "--features",
                       output / "image_features_by_item.parquet", "-k", "2",
                       env={"SKIMGFEAT_WEIGHTS": str(shared_weights)})
    assert result.returncode == 0, result.stderr
    found = read_csv(result.stdout)
    assert found.columns.tolist() == ["query", "rank", "item_id", "distance"]
    assert found["item_id"].iloc[0] == "lot4"
    assert "lot8" not in set(found[found["query"] == "lot8"]["item_id"])
    index = SimilarityIndex.read(output / "image_features_by_item.parquet")  # photos from the recorded folder
    assert index.photo_path("lot8").resolve() == (root / "photos" / "lot8_1.jpg").resolve()


@pytest.mark.shared
def test_duplicates_groups_the_copies_and_leaves_distinct_photos_out(catalogue):
    result = skimgfeat("duplicates", "--features", catalogue[1] / "image_features_raw.parquet")
    assert result.returncode == 0, result.stderr
    groups = read_csv(result.stdout)
    assert groups.columns.tolist() == ["group", "image_path", "chained"]
    assert groups.values.tolist() == [[0, "lot0_1.jpg", False], [0, "lot0_2.jpg", False], [1, "lot8_1.jpg", False],
                                      [1, "lot8_2.jpg", False]]


@pytest.mark.shared
def test_an_unknown_query_exits_2_naming_it(catalogue):
    result = skimgfeat("similar", "lot99_1.jpg", "--features", catalogue[1] / "image_features_raw.parquet")
    assert result.returncode == 2 and "lot99_1.jpg" in result.stderr and result.stdout == ""


def test_contact_sheet_shows_a_grey_tile_for_a_missing_photo(synthetic_photos):
    names = [str(path) for path in synthetic_photos[:3]]
    index = SimilarityIndex([*names, "gone.jpg"], np.eye(4)[[0, 0, 1, 2]] + 0.1)
    sheet = contact_sheet(index.similar([names[0]], k=3), index, thumbnail=50)
    assert sheet.size[0] == 4 * 50
    pixels = np.asarray(sheet)
    assert (pixels[:50, :50] != 255).any()  # the query photo is drawn
