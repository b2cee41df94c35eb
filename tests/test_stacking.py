"""OutOfFoldPredictor: out-of-fold predictions when fitting, the refit estimator afterwards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skimgfeat import CrossFittedTransformer, OutOfFoldPredictor

# Like TargetEncoder, fit_transform(X, y) is out-of-fold and so differs from fit(X, y).transform(X):
# the generic checks that demand they be equal must fail, and that difference is the point.
NOT_EQUAL_ON_PURPOSE = "fit_transform is out-of-fold, fit().transform() uses the refit estimator"
EXPECTED_FAILURES = {
    "check_transformer_general": NOT_EQUAL_ON_PURPOSE,
    "check_transformer_data_not_an_array": NOT_EQUAL_ON_PURPOSE,
}


@parametrize_with_checks(
    [OutOfFoldPredictor(Ridge(), cv=3), OutOfFoldPredictor(LogisticRegression(), cv=3, method="predict_proba")],
    expected_failed_checks=lambda estimator: EXPECTED_FAILURES,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture
def noise():
    """Features unrelated to the target: any skill on them is leakage."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 5)), rng.normal(size=200)


def test_fit_transform_is_out_of_fold_and_transform_uses_the_refit_estimator(noise):
    X, y = noise
    folds = KFold(5, shuffle=True, random_state=0)
    stacker = OutOfFoldPredictor(DecisionTreeRegressor(random_state=0), cv=folds)
    out_of_fold = stacker.fit_transform(X, y)
    expected = cross_val_predict(DecisionTreeRegressor(random_state=0), X, y, cv=folds)
    np.testing.assert_allclose(out_of_fold[:, 0], expected)
    # a fully grown tree memorises its training rows: in-sample it would hand y back
    np.testing.assert_allclose(stacker.transform(X)[:, 0], y)
    assert abs(np.corrcoef(out_of_fold[:, 0], y)[0, 1]) < 0.2


def test_in_a_pipeline_the_next_model_learns_how_much_to_trust_the_predictions(noise):
    X, y = noise
    stacked = make_pipeline(
        OutOfFoldPredictor(DecisionTreeRegressor(random_state=0), random_state=0), LinearRegression()
    ).fit(X, y)
    # fitted on in-sample predictions the slope would be 1 (they equal y); out-of-fold it is near 0
    assert abs(stacked[-1].coef_[0]) < 0.2
    rng = np.random.default_rng(1)
    new_rows = rng.normal(size=(50, 5))
    assert stacked.predict(new_rows).std() < 0.2 * y.std()


def test_an_int_cv_shuffles_with_the_random_state(noise):
    X, y = noise
    first = OutOfFoldPredictor(DecisionTreeRegressor(random_state=0), random_state=1).fit_transform(X, y)
    again = OutOfFoldPredictor(DecisionTreeRegressor(random_state=0), random_state=1).fit_transform(X, y)
    other = OutOfFoldPredictor(DecisionTreeRegressor(random_state=0), random_state=2).fit_transform(X, y)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_predict_proba_gives_one_named_column_per_class():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 4))
    y = np.array(["apple", "pear", "plum"])[np.argmax(X[:, :3], axis=1)]
    stacker = OutOfFoldPredictor(LogisticRegression(), cv=3, method="predict_proba").set_output(transform="pandas")
    table = stacker.fit_transform(pd.DataFrame(X, columns=list("abcd")), y)
    assert list(table.columns) == [
        "logisticregression_predict_proba_apple",
        "logisticregression_predict_proba_pear",
        "logisticregression_predict_proba_plum",
    ]
    np.testing.assert_allclose(table.sum(axis=1), 1.0)
    assert list(stacker.feature_names_in_) == list("abcd")


def test_set_output_pandas_names_the_prediction_column(noise):
    X, y = noise
    table = OutOfFoldPredictor(Ridge()).set_output(transform="pandas").fit(X, y).transform(X)
    assert list(table.columns) == ["ridge_predict"]


def test_nan_passes_only_to_an_estimator_that_accepts_it(noise):
    X, y = noise
    X = X.copy()
    X[::7, 0] = np.nan
    assert np.isfinite(OutOfFoldPredictor(HistGradientBoostingRegressor(max_iter=10)).fit_transform(X, y)).all()
    with pytest.raises(ValueError, match="NaN"):
        OutOfFoldPredictor(Ridge()).fit(X, y)


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"method": "predict_log_proba"}, "method"),
        ({"cv": 1}, "cv"),
        ({"shuffle": "yes"}, "shuffle"),
        ({"random_state": "seed"}, "random_state"),
        ({"n_jobs": 1.5}, "n_jobs"),
        ({"estimator": "ridge"}, "estimator"),
    ],
)
def test_a_bad_parameter_is_refused_by_name_when_fitting(noise, parameters, named):
    X, y = noise
    stacker = OutOfFoldPredictor(Ridge()).set_params(**parameters)
    with pytest.raises(InvalidParameterError, match=f"The '{named}' parameter of OutOfFoldPredictor must be"):
        stacker.fit(X, y)
    with pytest.raises(InvalidParameterError, match=f"The '{named}' parameter"):
        stacker.fit_transform(X, y)


def test_clone_keeps_the_parameters_and_transform_needs_a_fit(noise):
    X, _ = noise
    stacker = OutOfFoldPredictor(Ridge(alpha=3.0), cv=4, method="predict")
    assert clone(stacker).get_params()["cv"] == 4
    assert clone(stacker).get_params()["estimator__alpha"] == 3.0
    with pytest.raises(NotFittedError):
        OutOfFoldPredictor(Ridge()).transform(X)


class CountingRidge(Ridge):
    """A Ridge that counts the fits of all its clones."""

    fits = 0

    def fit(self, X, y, sample_weight=None):
        type(self).fits += 1
        return super().fit(X, y, sample_weight=sample_weight)


def test_fit_keeps_the_out_of_fold_predictions_and_fit_transform_fits_k_plus_one_times(noise):
    X, y = noise
    folds = KFold(4, shuffle=True, random_state=0)
    CountingRidge.fits = 0
    stacker = OutOfFoldPredictor(CountingRidge(), cv=folds).fit(X, y)
    assert CountingRidge.fits == 4 + 1  # one per fold, then the refit on all rows
    np.testing.assert_allclose(stacker.oof_predictions_[:, 0], cross_val_predict(Ridge(), X, y, cv=folds))

    CountingRidge.fits = 0
    returned = OutOfFoldPredictor(CountingRidge(), cv=folds).fit_transform(X, y)
    assert CountingRidge.fits == 4 + 1
    np.testing.assert_array_equal(returned, stacker.oof_predictions_)


# -- what scikit-learn's checks test after the comparison that fails on purpose ----------------
# check_transformer_general and check_transformer_data_not_an_array stop at "fit_transform equals
# fit().transform()", which an out-of-fold step must not satisfy; the checks behind it run here.

OUT_OF_FOLD_STEPS = [
    OutOfFoldPredictor(Ridge(), cv=3, random_state=0),
    OutOfFoldPredictor(LogisticRegression(), cv=3, method="predict_proba", random_state=0),
    CrossFittedTransformer(StandardScaler(), cv=3, random_state=0),
]


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=30, centers=[[0, 0, 0], [1, 1, 1]], random_state=0, n_features=2, cluster_std=0.1)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize("step", OUT_OF_FOLD_STEPS, ids=lambda step: repr(step)[:60])
def test_out_of_fold_steps_are_deterministic_with_a_random_state(step, blobs):
    X, y = blobs
    first, second = clone(step).fit_transform(X, y), clone(step).fit_transform(X, y)
    assert first.shape[0] == len(X)
    np.testing.assert_array_equal(first, second)
    fitted = clone(step).fit(X, y)
    np.testing.assert_array_equal(fitted.transform(X), clone(step).fit(X, y).transform(X))


@pytest.mark.parametrize("step", OUT_OF_FOLD_STEPS, ids=lambda step: repr(step)[:60])
def test_out_of_fold_steps_refuse_another_feature_width(step, blobs):
    X, y = blobs
    fitted = clone(step).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        fitted.transform(X[:, :-1])


@pytest.mark.parametrize("step", OUT_OF_FOLD_STEPS, ids=lambda step: repr(step)[:60])
def test_out_of_fold_steps_take_lists_as_they_take_arrays(step, blobs):
    X, y = blobs
    np.testing.assert_allclose(clone(step).fit_transform(X.tolist(), y.tolist()), clone(step).fit_transform(X, y))
    fitted = clone(step).fit(X, y)
    np.testing.assert_allclose(fitted.transform(X.tolist()), fitted.transform(X))
