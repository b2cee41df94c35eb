"""The estimators inside scikit-learn: Pipeline, GridSearchCV, joblib persistence."""

from __future__ import annotations

import shutil
import textwrap

import joblib
import numpy as np
import pytest
from _launcher import run_python
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline

from skimgfeat import CNNImageEmbedder, ItemAggregator


def price_pipeline(**embed_params) -> Pipeline:
    return Pipeline(
        [
            ("embed", CNNImageEmbedder(**embed_params)),
            ("agg", ItemAggregator()),
            ("rf", RandomForestRegressor(n_estimators=20, random_state=0)),
        ]
    )


def test_pipeline_fits_and_predicts_one_price_per_item(grocery_items, shared_weights):
    items, prices = grocery_items
    pipeline = price_pipeline(weights=shared_weights, batch_size=16).fit(items, prices)
    predicted = pipeline.predict(items)
    assert predicted.shape == (len(items),)
    # real features separate the product classes: the forest fits its training prices closely
    assert np.corrcoef(predicted, prices)[0, 1] > 0.9


def test_items_with_a_broken_photo_stay_aligned_with_their_price(grocery_items, tmp_path):
    items, prices = grocery_items
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    damaged = [list(photos) for photos in items]
    damaged[0] = [str(broken)]  # an item whose only photo is broken
    damaged[1] = [str(broken), *damaged[1]]
    pipeline = price_pipeline(weights=None, random_state=0, on_error="nan")
    pipeline.fit(damaged, prices)
    features = pipeline[:-1].transform(damaged)
    assert features.shape[0] == len(items)
    assert np.isnan(features[0]).all() and np.isfinite(features[1:]).all()
    assert pipeline.predict(damaged).shape == (len(items),)


def test_cross_val_score_and_set_output_pandas(grocery_items):
    items, prices = grocery_items
    pipeline = price_pipeline(weights=None, random_state=0).set_output(transform="pandas")
    scores = cross_val_score(pipeline, items, prices, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    table = pipeline[:-1].fit(items, prices).transform(items)
    assert list(table.columns[:2]) == ["img_feature_0", "img_feature_1"] and len(table) == len(items)


@pytest.mark.slow
def test_grid_search_over_models_and_aggregation(grocery_items, tmp_path, traced_templates):
    items, prices = grocery_items
    pipeline = price_pipeline(weights=None, random_state=0, cache=tmp_path / "cache")
    grid = {"embed__model_name": ["mobilenet_v2", "shufflenet_v2_x0_5"], "agg__method": ["mean", "max", "first"]}
    search = GridSearchCV(pipeline, grid, cv=3).fit(items, prices)
    assert len(search.cv_results_["params"]) == 6
    assert search.best_params_["embed__model_name"] in grid["embed__model_name"]
    assert search.predict(items).shape == (len(items),)
    # every photo was embedded once per model, then served from the cache in all other folds
    n_photos = len({p for photos in items for p in photos})
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2 * n_photos


def test_nearest_neighbours_find_the_same_product(grocery_items, shared_weights):
    items, _ = grocery_items
    embedder = CNNImageEmbedder(weights=shared_weights).fit()
    query = embedder.transform([photos[0] for photos in items[::2]])
    gallery = embedder.transform([photos[1] for photos in items[::2]])
    neighbours = NearestNeighbors(n_neighbors=1, metric="cosine").fit(gallery)
    _, found = neighbours.kneighbors(query)
    # 12 products, several of them apples of different varieties: chance is 1/12
    assert np.mean(found[:, 0] == np.arange(len(query))) >= 0.5


def test_joblib_round_trip_in_a_fresh_process_without_the_weights_file(grocery_items, shared_weights, tmp_path):
    items, prices = grocery_items
    weights_copy = tmp_path / "weights.pth"
    shutil.copy(shared_weights, weights_copy)
    pipeline = price_pipeline(weights=weights_copy).fit(items, prices)
    features = pipeline[:-1].transform(items[:4])
    predictions = pipeline.predict(items[:4])
    model_file = tmp_path / "price model.joblib"
    joblib.dump(pipeline, model_file)
    weights_copy.unlink()  # deployment has neither the weights file nor a network
    np.save(tmp_path / "items.npy", np.asarray(items[:4], dtype=object), allow_pickle=True)
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np
        pipeline = joblib.load({str(model_file)!r})
        items = list(np.load({str(tmp_path / "items.npy")!r}, allow_pickle=True))
        np.save({str(tmp_path / "features.npy")!r}, pipeline[:-1].transform([list(i) for i in items]))
        np.save({str(tmp_path / "predictions.npy")!r}, pipeline.predict([list(i) for i in items]))
        print(pipeline.named_steps["embed"].model_info_["weights_sha256"])
        """
    )
    env = {"CUDA_VISIBLE_DEVICES": "", "TORCH_HOME": str(tmp_path / "no-cache"), "PATH": "/usr/bin:/bin"}
    result = run_python(script, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), features)
    np.testing.assert_array_equal(np.load(tmp_path / "predictions.npy"), predictions)
    assert result.stdout.strip() == pipeline.named_steps["embed"].model_info_["weights_sha256"]
