"""Fine-tuning: fit(X, y) trains the network's last blocks on y, transform returns the learned features."""

from __future__ import annotations

import os
import pickle
import textwrap
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from _launcher import run_python
from conftest import GROCERY, SHARED, _require
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import Pipeline

from skimgfeat import CNNImageEmbedder, ItemAggregator
from skimgfeat.engine.decoding import decode_pixels
from skimgfeat.engine.finetune import Photos, PhotoStore, decode_samples
from skimgfeat.engine.inputs import parse_image_input
from skimgfeat.engine.preprocessing import Preprocessing

# Quick settings for tests that check the mechanics, not the recipe: small crops, one epoch.
QUICK = {"train_size": 64, "source_size": 80, "validation_fraction": 0.0}
# ... and embedding at 96 px instead of 224: every pass over the photos costs a fifth.
SMALL = {"resize_size": 110, "crop_size": 96}


def grocery_split(name: str, classes: list[int], per_class: int | None = None) -> tuple[list[str], np.ndarray]:
    """Photos and fine labels of ``classes`` from the grocery ``name`` split (at most ``per_class`` each)."""
    paths, labels, seen = [], [], {}
    for line in _require(GROCERY / f"{name}.txt").read_text().splitlines():
        relative, fine_id, _ = (part.strip() for part in line.split(","))
        label = int(fine_id)
        if label in classes and seen.get(label, 0) < (per_class or 10**9):
            seen[label] = seen.get(label, 0) + 1
            paths.append(str(GROCERY / relative))
            labels.append(label)
    return paths, np.asarray(labels)


@pytest.fixture(scope="module")
def small_grocery():
    """Four products (two apple varieties, two pears), six training photos each."""
    return grocery_split("train", [0, 1, 20, 21], per_class=6)


def quick_embedder(weights, **params) -> CNNImageEmbedder:
    settings = {"fine_tune": 2, "fine_tune_epochs": 1, "fine_tune_options": QUICK, "random_state": 0, **SMALL}
    return CNNImageEmbedder(weights=weights, **{**settings, **params})


def test_fine_tuning_needs_y(synthetic_photos):
    with pytest.raises(ValueError, match=r"fine_tune=2 trains the network .* fit\(X, y\)"):
        CNNImageEmbedder(weights=None, fine_tune=2).fit(synthetic_photos)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fine_tune": -1}, "The 'fine_tune' parameter of CNNImageEmbedder must be"),
        ({"fine_tune": "last"}, "The 'fine_tune' parameter of CNNImageEmbedder must be"),
        ({"fine_tune": 2, "fine_tune_task": "ranking"}, "The 'fine_tune_task' parameter of CNNImageEmbedder must be"),
        ({"fine_tune": 2, "fine_tune_epochs": 0}, "The 'fine_tune_epochs' parameter of CNNImageEmbedder must be"),
        ({"fine_tune": 2, "fine_tune_options": {"learning_rat": 0.1}}, "unknown fine_tune_options"),
        ({"fine_tune": 99}, "fine_tune=99 but the network has 19 blocks"),
    ],
)
def test_bad_fine_tuning_parameters_are_named(synthetic_photos, params, message):
    with pytest.raises(ValueError, match=message):
        CNNImageEmbedder(weights=None, **params).fit(synthetic_photos, [0, 1, 0, 1, 0, 1])


def test_fine_tuned_features_keep_width_and_names_and_change(small_grocery, shared_weights):
    paths, labels = small_grocery
    frozen = CNNImageEmbedder(weights=shared_weights, **SMALL).fit()
    tuned = quick_embedder(shared_weights).fit(paths, labels)
    assert tuned.n_features_out_ == frozen.n_features_out_ == 1280
    assert list(tuned.get_feature_names_out()) == list(frozen.get_feature_names_out())
    features = tuned.transform(paths[:3])
    assert features.shape == (3, 1280) and not np.allclose(features, frozen.transform(paths[:3]))
    record = tuned.model_info_["fine_tuning"]
    assert record["task"] == "classification" and record["n_classes"] == 4 and record["blocks"] == 2
    assert record["n_samples"] == record["n_images"] == len(paths) and record["epochs_run"] == 1
    assert tuned.model_info_["parameters_sha256"] != frozen.model_info_["parameters_sha256"]


def test_random_state_makes_fine_tuning_deterministic(small_grocery, shared_weights):
    paths, labels = small_grocery
    options = {**QUICK, "validation_fraction": 0.25}
    first = quick_embedder(shared_weights, fine_tune_options=options).fit(paths, labels)
    second = quick_embedder(shared_weights, fine_tune_options=options).fit(paths, labels)
    np.testing.assert_array_equal(first.transform(paths), second.transform(paths))
    assert first.model_info_["fine_tuning"]["validation_score"] is not None
    other_seed = quick_embedder(shared_weights, fine_tune_options=options, random_state=1).fit(paths, labels)
    assert not np.array_equal(first.transform(paths[:2]), other_seed.transform(paths[:2]))


def test_fine_tuned_features_beat_frozen_ones_on_held_out_photos(shared_weights):
    """Five apple varieties, three pears and three melons: products the frozen features confuse.

    Both embed at 112 px, the size the network trains at (a quarter of the work of 224 px);
    random seeds 0-2 give margins of +0.095 to +0.119 over the frozen features.
    """
    classes = [0, 1, 2, 3, 4, 11, 12, 13, 20, 21, 22]
    train_paths, y_train = grocery_split("train", classes, per_class=16)
    val_paths, y_val = grocery_split("val", classes)
    size = {"resize_size": 128, "crop_size": 112, "backend": "eager"}

    def accuracy(embedder):
        probe = LogisticRegression(max_iter=2000).fit(embedder.transform(train_paths), y_train)
        return probe.score(embedder.transform(val_paths), y_val)

    frozen = accuracy(CNNImageEmbedder(weights=shared_weights, **size).fit())
    tuned = CNNImageEmbedder(
        weights=shared_weights, fine_tune="all", fine_tune_epochs=4, random_state=0, **size,
        fine_tune_options={"train_size": 112, "source_size": 145, "validation_fraction": 0.0},
    ).fit(train_paths, y_train)
    assert accuracy(tuned) >= frozen + 0.05


def test_house_prices_train_the_network_through_a_pipeline_with_item_aggregator(shared_weights):
    houses = pd.read_csv(_require(SHARED / "images" / "houses" / "houses.csv")).head(16)
    rooms = ("bathroom", "bedroom", "frontal", "kitchen")
    folder = SHARED / "images" / "houses"
    photos = [[str(folder / f"{house}_{room}.jpg") for room in rooms] for house in houses.house_id]
    log_price = np.log(houses.price.to_numpy())
    pipeline = Pipeline([("embed", quick_embedder(shared_weights)), ("agg", ItemAggregator()), ("ridge", Ridge())])
    pipeline.fit(photos, log_price)
    record = pipeline.named_steps["embed"].model_info_["fine_tuning"]
    assert record["task"] == "regression" and record["n_samples"] == 16 and record["n_images"] == 64
    assert pipeline.predict(photos).shape == (16,)
    # the task can be forced: the same prices, cut into classes
    cheap = (log_price > np.median(log_price)).astype(float)
    forced = quick_embedder(shared_weights, fine_tune_task="classification").fit(photos, cheap)
    assert forced.model_info_["fine_tuning"]["task"] == "classification"


def test_grid_search_over_fine_tune_trains_on_its_own_fold_only(small_grocery, shared_weights):
    paths, labels = small_grocery
    pipeline = Pipeline([("embed", quick_embedder(shared_weights)), ("model", LogisticRegression(max_iter=500))])
    search = GridSearchCV(pipeline, {"embed__fine_tune": [0, 2]}, cv=2).fit(paths, labels)
    assert search.best_params_["embed__fine_tune"] in (0, 2)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    folds = cross_validate(pipeline, paths, labels, cv=2, return_estimator=True, return_indices=True)
    for fitted, train_rows in zip(folds["estimator"], folds["indices"]["train"]):
        assert fitted.named_steps["embed"].model_info_["fine_tuning"]["n_samples"] == len(train_rows)


def test_failed_photos_are_left_out_of_training(small_grocery, shared_weights, tmp_path):
    paths, labels = small_grocery
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    embedder = quick_embedder(shared_weights, on_error="nan").fit([str(broken), *paths], [labels[0], *labels])
    assert [error.path for error in embedder.errors_] == [str(broken)]
    assert embedder.model_info_["fine_tuning"]["n_samples"] == len(paths)
    with pytest.raises(Exception, match="broken.jpg"):
        quick_embedder(shared_weights).fit([str(broken), *paths], [labels[0], *labels])


def test_the_cache_keeps_fine_tuned_and_frozen_features_apart(small_grocery, shared_weights, tmp_path):
    paths, labels = small_grocery
    frozen = CNNImageEmbedder(weights=shared_weights, cache=tmp_path, **SMALL).fit().transform(paths[:4])
    tuned = quick_embedder(shared_weights, cache=tmp_path).fit(paths, labels)
    first = tuned.transform(paths[:4])
    assert not np.allclose(first, frozen)
    np.testing.assert_array_equal(tuned.transform(paths[:4]), first)  # served from its own namespace
    assert len({folder.name for folder in tmp_path.iterdir()}) == 2


def test_pickled_fine_tuned_embedder_gives_identical_features_in_a_fresh_process(
    small_grocery, shared_weights, tmp_path
):
    paths, labels = small_grocery
    embedder = quick_embedder(shared_weights).fit(paths, labels)
    expected = embedder.transform(paths[:4])
    model_file = tmp_path / "embedder.pkl"
    model_file.write_bytes(pickle.dumps(embedder))
    script = textwrap.dedent(
        f"""
        import pickle, numpy as np
        embedder = pickle.loads(open({str(model_file)!r}, "rb").read())
        np.save({str(tmp_path / "features.npy")!r}, embedder.transform({paths[:4]!r}))
        print(embedder.model_info_["fine_tuning"]["task"])
        """
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = run_python(script, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), expected)
    assert result.stdout.strip() == "classification"


@pytest.mark.parametrize(
    ("y", "task", "message"),
    [
        ([3, 3, 3, 3], "auto", r"at least two classes in y, got only \[3\]"),
        ([1.5, np.nan, 2.5, 4.0], "regression", r"finite y: 1 of 4 samples .* position 1"),
        ([1.5, 2.5, np.inf, 4.0], "auto", r"finite y: 1 of 4 samples .* position 2"),
    ],
)
def test_unusable_y_is_refused_before_any_photo_is_decoded(tmp_path, y, task, message):
    # none of these files exists: decoding the first would raise ImageLoadError instead
    missing = [str(tmp_path / f"not_decoded_{i}.jpg") for i in range(4)]
    with pytest.raises(ValueError, match=message):
        CNNImageEmbedder(weights=None, fine_tune="all", fine_tune_task=task).fit(missing, y)


def test_decoded_training_photos_wait_in_a_file_not_in_memory(grocery_photos):
    """Decoding 96 photos for training takes no more memory than decoding 8, and all of them read back."""
    paths = [str(path) for path in grocery_photos[:96]]
    source = Preprocessing(resize=96, crop=96)

    def decoding_peak(some_paths):
        tracemalloc.start()
        try:
            photos, errors = decode_samples(parse_image_input(some_paths), source, None, "raise", n_workers=1)
            return photos, errors, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, _, few_peak = decoding_peak(paths[:8])
    photos, errors, peak = decoding_peak(paths)
    one_photo = 96 * 96 * 3
    assert errors == [] and len(photos.sample_of_photo) == 96
    assert peak < few_peak + 24 * one_photo  # all 96 in memory would add 88 photos, twice that while stacked
    expected = np.stack([decode_pixels(path, source, None) for path in paths[::7]])
    np.testing.assert_array_equal(photos.store.read(range(0, 96, 7)).numpy(), expected)
    few.close()
    photos.close()


def test_the_photos_of_a_batch_of_samples_come_from_where_each_sample_starts():
    # six samples with 2, 1, 0 (left out), 3, 1 and 2 photos; photos are stored sample after sample
    photos = Photos(PhotoStore(8), np.array([0, 0, 1, 2, 2, 2, 3, 4, 4]), np.array([0, 1, 3, 4, 5]))
    rows, owners = photos.rows_of(np.array([4, 0, 2]))
    assert rows.tolist() == [7, 8, 0, 1, 3, 4, 5]
    assert owners.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert photos.photo_count(np.array([2, 3, 1])).tolist() == [3, 1, 1]
    photos.close()


DIVERGING = {"learning_rate": 1e10, "batch_size": 4}  # far too high: the loss is NaN within the first epoch


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_diverging_fine_tune_raises_and_names_the_learning_rate(small_grocery, shared_weights, task):
    paths, labels = small_grocery[0][::2], small_grocery[1][::2]
    y = labels if task == "classification" else np.log1p(labels) + np.linspace(0, 1, len(labels))
    embedder = quick_embedder(
        shared_weights, fine_tune="all", fine_tune_options={**QUICK, **DIVERGING, "validation_fraction": 0.25}
    )
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1: .* fine_tune_options\['learning_rate'\]"):
        embedder.fit(paths, y)
    with pytest.raises(NotFittedError):  # the half-trained network is not kept as if it were fitted
        embedder.transform(paths[:1])
