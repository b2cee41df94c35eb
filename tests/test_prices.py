"""Price features without leakage: CrossFittedTransformer and VisualComparables on real house photos.

The houses are those of the Houses Dataset (Ahmed and Moustafa 2016, arXiv:1609.08399) in
../shared; photos are embedded at 64 px to keep the tests fast.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import sklearn
from _launcher import run_python
from conftest import SHARED, _require
from sklearn.base import clone
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skimgfeat import (
    CNNImageEmbedder,
    CrossFittedTransformer,
    ItemAggregator,
    OutOfFoldPredictor,
    RaggedPhotos,
    VisualComparables,
)
from skimgfeat.tabular.stacking import fold_splitter

HOUSES = SHARED / "images" / "houses"
ROOMS = ("bathroom", "bedroom", "frontal", "kitchen")


@pytest.fixture(scope="module")
def houses() -> pd.DataFrame:
    """The first 16 houses: tabular columns, log price, and the list of their four photos."""
    table = pd.read_csv(_require(HOUSES) / "houses.csv").head(16)
    table["photos"] = [[str(HOUSES / f"{house}_{room}.jpg") for room in ROOMS] for house in table["house_id"]]
    table["log_price"] = np.log(table["price"])
    return table


@pytest.fixture(scope="module")
def small_embedder(shared_weights) -> CNNImageEmbedder:
    return CNNImageEmbedder(weights=shared_weights, resize_size=64, crop_size=64, backend="eager")


@pytest.fixture(scope="module")
def photo_features(houses, small_embedder) -> np.ndarray:
    """(16 houses, 4 photos, 1280) frozen features, padded (the array form users may pass)."""
    return np.asarray(clone(small_embedder).fit().transform(houses["photos"]))


def changed_target(y: np.ndarray, row: int) -> np.ndarray:
    y = np.array(y, dtype=float)
    y[row] += 5.0  # a house 150 times dearer
    return y


# -- CrossFittedTransformer -------------------------------------------------------


def test_crossfit_row_features_never_depend_on_its_own_target(houses, photo_features):
    # PLS learns its projection from y: a transformer whose outputs can carry the target.
    X, y = photo_features.mean(axis=1), houses["log_price"].to_numpy()
    crossfit = CrossFittedTransformer(PLSRegression(n_components=2), cv=4, random_state=0)
    before = crossfit.fit_transform(X, y)
    after = clone(crossfit).fit_transform(X, changed_target(y, 3))

    np.testing.assert_array_equal(after[3], before[3])
    assert not np.allclose(np.delete(after, 3, axis=0), np.delete(before, 3, axis=0))
    # Fitted on all rows, as a plain Pipeline step would be, row 3 moves with its target.
    plain = PLSRegression(n_components=2)
    assert not np.allclose(
        clone(plain).fit(X, y).transform(X)[3], clone(plain).fit(X, changed_target(y, 3)).transform(X)[3]
    )


def test_crossfit_transforms_new_rows_with_the_model_fitted_on_all_rows(houses, photo_features):
    X, y = photo_features.mean(axis=1), houses["log_price"].to_numpy()
    train, new = np.arange(12), np.arange(12, 16)
    crossfit = CrossFittedTransformer(PLSRegression(n_components=2), cv=3, random_state=0)
    out_of_fold = crossfit.fit_transform(X[train], y[train])

    all_rows = PLSRegression(n_components=2).fit(X[train], y[train])
    np.testing.assert_allclose(crossfit.transform(X[new]), all_rows.transform(X[new]))
    assert not np.allclose(out_of_fold, all_rows.transform(X[train]))
    assert crossfit.n_splits_ == 3
    assert crossfit.get_feature_names_out().tolist() == ["plsregression0", "plsregression1"]


@pytest.fixture(scope="module")
def crossfitted_finetuning(houses, small_embedder):
    """A tiny cross-fitted fine-tuning (2 folds: 3 fine-tunes) on 6 houses, two photos each, and 2 new houses."""
    embedder = clone(small_embedder).set_params(
        fine_tune=1,
        fine_tune_epochs=1,
        random_state=0,
        fine_tune_options={
            "train_size": 64,
            "source_size": 72,
            "validation_fraction": 0.0,
            "probe_epochs": 5,
            "n_views": 1,
        },
    )
    photos = make_pipeline(embedder, ItemAggregator())
    crossfit = CrossFittedTransformer(photos, cv=2, random_state=0)
    two_photos = houses.assign(photos=[photos[::2] for photos in houses["photos"]])
    train, new = two_photos.iloc[:6], two_photos.iloc[6:8]
    out_of_fold = crossfit.fit_transform(train["photos"], train["log_price"])
    return crossfit, out_of_fold, train, new


def test_crossfit_finetuned_features_of_a_fold_come_from_the_network_trained_on_the_other(crossfitted_finetuning):
    crossfit, out_of_fold, train, new = crossfitted_finetuning
    (other, fold), _ = fold_splitter(2, random_state=0).split(train)
    network = clone(crossfit.transformer).fit(train["photos"].iloc[other], train["log_price"].iloc[other])

    np.testing.assert_array_equal(out_of_fold[fold], network.transform(train["photos"].iloc[fold]))
    assert network[0].model_info_["fine_tuning"]["n_samples"] == len(other)
    # New houses: the network fine-tuned on all 6 training houses.
    assert crossfit.transformer_[0].model_info_["fine_tuning"]["n_samples"] == len(train)
    frozen = clone(crossfit.transformer).set_params(cnnimageembedder__fine_tune=0).fit(new["photos"])
    assert not np.allclose(crossfit.transform(new["photos"]), frozen.transform(new["photos"]))


def test_crossfit_and_comparables_pipeline_predicts_the_same_in_a_fresh_process(
    crossfitted_finetuning, photo_features, tmp_path
):
    crossfit, _, train, new = crossfitted_finetuning
    crossfit_path = tmp_path / "crossfit.pkl"
    crossfit_path.write_bytes(pickle.dumps(crossfit))
    np.save(tmp_path / "crossfit_expected.npy", crossfit.transform(new["photos"]))
    new["photos"].to_pickle(tmp_path / "new_photos.pkl")

    columns = [f"f{i}" for i in range(photo_features.shape[2])]
    table = pd.concat(
        [pd.DataFrame(photo_features.mean(axis=1), columns=columns), pd.DataFrame({"area": range(16)})], axis=1
    )
    features = ColumnTransformer(
        [
            ("comparables", VisualComparables(n_neighbors=3, cv=3, random_state=0), columns),
            ("table", "passthrough", ["area"]),
        ]
    )
    model = TransformedTargetRegressor(make_pipeline(features, Ridge()), func=np.log, inverse_func=np.exp)
    model.fit(table.iloc[:12], np.exp(np.arange(12) / 4.0))
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    table.iloc[12:].to_pickle(tmp_path / "new_rows.pkl")
    np.save(tmp_path / "model_expected.npy", model.predict(table.iloc[12:]))

    script = (
        "import pickle, sys, numpy as np, pandas as pd\n"
        "from pathlib import Path\n"
        "d = Path(sys.argv[1])\n"
        "crossfit = pickle.loads((d / 'crossfit.pkl').read_bytes())\n"
        "np.testing.assert_array_equal(crossfit.transform(pd.read_pickle(d / 'new_photos.pkl')),"
        " np.load(d / 'crossfit_expected.npy'))\n"
        "model = pickle.loads((d / 'model.pkl').read_bytes())\n"
        "np.testing.assert_allclose(model.predict(pd.read_pickle(d / 'new_rows.pkl')),"
        " np.load(d / 'model_expected.npy'), rtol=1e-12)\n"
        "print('same')\n"
    )
    done = run_python(script, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same"


# -- VisualComparables ----------------------------------------------------------------


def test_comparables_row_never_sees_its_own_target(houses, photo_features):
    y = houses["log_price"].to_numpy()
    comparables = VisualComparables(n_neighbors=3, cv=4, random_state=0)
    before = comparables.fit_transform(photo_features, y)
    after = clone(comparables).fit_transform(photo_features, changed_target(y, 5))

    assert before[5, 0] == after[5, 0]
    assert not np.allclose(before, after)  # the other folds' rows do use row 5's price
    # Fitted, then applied to the same rows, a row is its own nearest comparable (distance 0).
    np.testing.assert_allclose(comparables.transform(photo_features)[:, 0], y)


def test_comparables_of_new_rows_are_the_weighted_prices_of_the_nearest_training_houses(houses, photo_features):
    y = houses["log_price"].to_numpy()
    train, new = np.arange(12), np.arange(12, 16)
    comparables = VisualComparables(n_neighbors=4).fit(photo_features[train], y[train])

    def direction(photos):  # photos scaled to unit length, averaged, scaled again
        photos = photos / np.linalg.norm(photos, axis=-1, keepdims=True)
        item = photos.mean(axis=1)
        return item / np.linalg.norm(item, axis=1, keepdims=True)

    distance = 1.0 - direction(photo_features[new]) @ direction(photo_features[train]).T
    nearest = np.argsort(distance, axis=1)[:, :4]
    weight = 1.0 / np.take_along_axis(distance, nearest, axis=1)
    expected = (weight * y[train][nearest]).sum(axis=1) / weight.sum(axis=1)
    np.testing.assert_allclose(comparables.transform(photo_features[new])[:, 0], expected, rtol=1e-6)

    uniform = VisualComparables(n_neighbors=4, weights="uniform").fit(photo_features[train], y[train])
    np.testing.assert_allclose(uniform.transform(photo_features[new])[:, 0], y[train][nearest].mean(axis=1), rtol=1e-6)
    # The same neighbours through a SimilarityIndex.
    indexed = VisualComparables(n_neighbors=4, algorithm="index").fit(photo_features[train], y[train])
    np.testing.assert_allclose(
        indexed.transform(photo_features[new]), comparables.transform(photo_features[new]), rtol=1e-5
    )


def test_comparables_take_per_slot_columns_and_skip_houses_without_photos(houses, photo_features):
    y = houses["log_price"].to_numpy()
    per_slot = photo_features.reshape(len(houses), -1)
    features = photo_features.copy()
    features[2] = np.nan  # a house whose four photos failed to load
    out = VisualComparables(n_neighbors=3, cv=4, random_state=0).fit_transform(features, y)

    assert np.isnan(out[2, 0]) and not np.isnan(np.delete(out, 2, axis=0)).any()
    assert VisualComparables().fit(per_slot, y).transform(per_slot[:2]).shape == (2, 1)


def test_comparables_beside_tabular_columns_in_a_column_transformer(houses, photo_features):
    columns = [f"f{i}" for i in range(photo_features.shape[2])]
    table = pd.concat([pd.DataFrame(photo_features.mean(axis=1), columns=columns), houses[["area"]]], axis=1)
    features = ColumnTransformer(
        [("comparables", VisualComparables(n_neighbors=3, random_state=0), columns), ("table", "passthrough", ["area"])]
    )
    out = features.fit_transform(table, houses["log_price"])

    assert out.shape == (16, 2)
    assert features.get_feature_names_out().tolist() == ["comparables__comparables_target", "table__area"]


@pytest.mark.parametrize(
    "estimator",
    [
        VisualComparables(n_neighbors=0),
        VisualComparables(weights="nearest"),
        VisualComparables(algorithm="faiss"),
        CrossFittedTransformer("embedder"),
        CrossFittedTransformer(Ridge(), cv="five"),
    ],
)
def test_bad_parameters_are_refused_at_fit(estimator):
    X, y = np.eye(6), np.arange(6.0)
    with pytest.raises(InvalidParameterError):
        estimator.fit_transform(X, y)


def test_the_same_folds_in_every_out_of_fold_step():
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20.0)
    split = fold_splitter(5, random_state=1).split(X)
    (_, first_test), *_ = split
    row = first_test[0]
    # Comparables of a row come only from the other folds of the shared splitter.
    comparables = VisualComparables(n_neighbors=20, weights="uniform", cv=5, random_state=1).fit_transform(X, y)
    others = np.setdiff1d(np.arange(20), first_test)
    assert comparables[row, 0] == pytest.approx(y[others].mean())


# Like TargetEncoder, fit_transform(X, y) is out-of-fold and so differs from fit(X, y).transform(X).
NOT_EQUAL_ON_PURPOSE = "fit_transform is out-of-fold, fit().transform() uses the model fitted on all rows"


@parametrize_with_checks(
    [VisualComparables(n_neighbors=3, cv=3), CrossFittedTransformer(StandardScaler(), cv=3)],
    expected_failed_checks=lambda estimator: (
        {"check_transformer_general": NOT_EQUAL_ON_PURPOSE, "check_transformer_data_not_an_array": NOT_EQUAL_ON_PURPOSE}
        if isinstance(estimator, CrossFittedTransformer)
        else {}
    ),
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_comparables_and_crossfit_take_the_photos_rows_as_they_take_the_padded_array(houses, photo_features):
    y = houses["log_price"].to_numpy()
    ragged = RaggedPhotos.from_padded(photo_features)
    comparables = VisualComparables(n_neighbors=3, cv=4, random_state=0)
    np.testing.assert_allclose(
        clone(comparables).fit_transform(ragged, y), clone(comparables).fit_transform(photo_features, y), rtol=1e-12
    )
    # each fold's photos come back ragged and in row order, never padded to the widest fold
    passed_through = CrossFittedTransformer(FunctionTransformer(), cv=4, random_state=0).fit_transform(ragged, y)
    assert isinstance(passed_through, RaggedPhotos)
    np.testing.assert_array_equal(np.asarray(passed_through), photo_features)


# -- groups: a lot listed twice never hands its price to its other listing ----------------------


def relisted(houses, photo_features):
    """Every house listed twice (a lot re-listed in a later sale): the same photos, almost the same price."""
    features = np.nanmean(photo_features, axis=1)
    X = np.vstack([features, features])
    y = np.concatenate([houses["log_price"], houses["log_price"] + 0.01])
    lots = np.concatenate([np.arange(16), np.arange(16)])
    return X, y, lots


def share_of_rows_moved_by_their_twins_price(step, X, y, groups=None) -> float:
    """How often a row's out-of-fold feature moves when only the price of its other listing changes."""
    before = clone(step).fit_transform(X, y, groups=groups)
    moved = 0
    for row in range(16):
        changed = y.copy()
        changed[row + 16] += 5.0  # the re-listing's price only
        moved += not np.allclose(clone(step).fit_transform(X, changed, groups=groups)[row], before[row])
    return moved / 16


GROUPED_STEPS = {
    "VisualComparables": VisualComparables(n_neighbors=3, cv=4, random_state=0),
    "OutOfFoldPredictor": OutOfFoldPredictor(KNeighborsRegressor(n_neighbors=1), cv=4, random_state=0),
    "CrossFittedTransformer": CrossFittedTransformer(VisualComparables(n_neighbors=1, cv=2), cv=4, random_state=0),
}


@pytest.mark.parametrize("name", GROUPED_STEPS)
def test_without_groups_a_relisted_lot_leaks_its_price_and_with_them_it_does_not(houses, photo_features, name):
    X, y, lots = relisted(houses, photo_features)
    step = GROUPED_STEPS[name]
    assert share_of_rows_moved_by_their_twins_price(step, X, y) >= 0.5  # the leak
    assert share_of_rows_moved_by_their_twins_price(step, X, y, groups=lots) == 0  # none
    # the same through a GroupKFold object as cv (which needs the groups at split time)
    grouped = clone(step).set_params(cv=GroupKFold(4))
    assert share_of_rows_moved_by_their_twins_price(grouped, X, y, groups=lots) == 0
    with pytest.raises(ValueError, match="groups"):
        clone(grouped).fit_transform(X, y)


def test_comparables_of_a_relisted_lot_are_its_twins_price_unless_grouped(houses, photo_features):
    X, y, lots = relisted(houses, photo_features)
    twin = np.concatenate([np.arange(16, 32), np.arange(16)])
    comparables = VisualComparables(n_neighbors=3, cv=4, random_state=0)
    naive = comparables.fit_transform(X, y)[:, 0]
    assert np.isclose(naive, y[twin]).mean() >= 0.5  # the identical picture takes all the weight
    grouped = clone(comparables).fit_transform(X, y, groups=lots)[:, 0]
    assert not np.isclose(grouped, y[twin]).any()


def test_groups_reach_the_folds_through_metadata_routing_in_a_pipeline(houses, photo_features):
    X, y, lots = relisted(houses, photo_features)
    expected = VisualComparables(n_neighbors=3, cv=GroupKFold(4)).fit_transform(X, y, groups=lots)
    with sklearn.config_context(enable_metadata_routing=True):
        step = VisualComparables(n_neighbors=3, cv=GroupKFold(4)).set_fit_request(groups=True)
        pipeline = make_pipeline(step, Ridge())
        pipeline.fit(X, y, groups=lots)
        np.testing.assert_allclose(pipeline[0].fit_transform(X, y, groups=lots), expected)
        np.testing.assert_allclose(pipeline.predict(X), Ridge().fit(expected, y).predict(pipeline[0].transform(X)))
