"""OutOfFoldPredictor: an estimator's predictions as features, out-of-fold on the training data."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context, clone, is_classifier
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    check_cv,
    cross_val_predict,
)
from sklearn.utils import get_tags
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, check_is_fitted, validate_data

METHODS = ("predict", "predict_proba", "decision_function")


class OutOfFoldPredictor(TransformerMixin, BaseEstimator):
    """Turn an estimator's predictions into features for a second model, without leakage.

    The stacking step for wide image features: a ridge regression (or any estimator)
    condenses 1280 CNN features into one predicted value, which a tabular model then uses
    beside its other columns. Fitted on all training rows and applied to the same rows,
    the inner estimator would hand the next model predictions that already saw the
    target, and that model would learn to trust them far too much. So, as
    :class:`~sklearn.preprocessing.TargetEncoder` does for categories:

    * ``fit_transform(X, y)`` returns **out-of-fold** predictions
      (:func:`~sklearn.model_selection.cross_val_predict`): each training row is predicted
      by a copy of the estimator that never saw it. Inside a
      :class:`~sklearn.pipeline.Pipeline` this is what the next step is fitted on;
    * ``fit`` also refits the estimator on all rows (``estimator_``), and
      ``transform(X)`` predicts new rows with it: what the next step sees at predict time.

    ``fit`` keeps the out-of-fold predictions (``oof_predictions_``, e.g. to score the
    estimator out of fold) and ``fit_transform`` returns them: k + 1 fits in all.

    Hence ``fit(X, y).transform(X)`` differs from ``fit_transform(X, y)`` on purpose.

    Parameters
    ----------
    estimator : estimator object
        A scikit-learn regressor or classifier, cloned before fitting.
    cv : int, cross-validation generator, iterable or None, default=5
        Folds for the out-of-fold predictions. An int (at least 2) gives a shuffled
        :class:`~sklearn.model_selection.KFold`, or
        :class:`~sklearn.model_selection.StratifiedKFold` for a classifier; None gives
        5 folds, not shuffled (:func:`~sklearn.model_selection.check_cv`).
    method : {"predict", "predict_proba", "decision_function"}, default="predict"
        The estimator's method whose output becomes the features.
    shuffle : bool, default=True
        Shuffle the rows before splitting them into folds (only when ``cv`` is an int).
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling of the folds.
    n_jobs : int or None, default=None
        Folds fitted in parallel by :func:`~sklearn.model_selection.cross_val_predict`.

    Attributes
    ----------
    estimator_ : estimator object
        The estimator fitted on all training rows; used by ``transform``.
    oof_predictions_ : ndarray of shape (n_samples, n_outputs)
        The out-of-fold predictions of the training rows, one column per output
        (``n_features_out_`` of them): what ``fit_transform`` returns.
    n_features_in_ : int
        Number of input features seen in ``fit``.
    feature_names_in_ : ndarray of str
        Input column names, when ``fit`` saw a DataFrame with string columns.
    n_features_out_ : int
        Number of output columns: 1 for ``predict`` of a single target.

    See Also
    --------
    sklearn.ensemble.StackingRegressor : Stacking whose final model sees only the predictions.
    sklearn.preprocessing.TargetEncoder : The same out-of-fold pattern for categories.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from skimgfeat import OutOfFoldPredictor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 3))
    >>> y = X @ [1.0, 2.0, 0.0]
    >>> oof = OutOfFoldPredictor(Ridge(), cv=4, random_state=0)
    >>> oof.fit_transform(X, y).shape
    (40, 1)
    >>> oof.get_feature_names_out()
    array(['ridge_predict'], dtype=object)
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit"])],
        "cv": ["cv_object"],
        "method": [StrOptions(set(METHODS))],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        estimator,
        *,
        cv=5,
        method: str = "predict",
        shuffle: bool = True,
        random_state=None,
        n_jobs: int | None = None,
    ) -> None:
        self.estimator = estimator
        self.cv = cv
        self.method = method
        self.shuffle = shuffle
        self.random_state = random_state
        self.n_jobs = n_jobs

    @_fit_context(prefer_skip_nested_validation=False)  # the inner estimator validates its own
    def fit(self, X, y, groups=None, **fit_params) -> OutOfFoldPredictor:
        """Compute the out-of-fold predictions of the training rows, then refit on all rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        groups : array-like of shape (n_samples,) or None, default=None
            Group labels (the lot, the item, the object a row shows): rows of one
            group always land in the same fold, so a re-listed lot never hands its
            own target to its other listing. With an int ``cv`` they select
            :class:`~sklearn.model_selection.GroupKFold`; a group splitter passed as
            ``cv`` receives them. Routed by scikit-learn's metadata routing too
            (``set_fit_request(groups=True)``).
        **fit_params : dict
            Passed to the estimator's ``fit``.

        Returns
        -------
        self : OutOfFoldPredictor
        """
        X, y = validate_data(self, X, y, ensure_all_finite=self._ensure_all_finite(), multi_output=True)
        if is_classifier(self.estimator):
            check_classification_targets(y)
        folds = fold_indices(self._folds(y, groups), X, y, groups)
        out_of_fold = cross_val_predict(
            clone(self.estimator), X, y, cv=folds, method=self.method, n_jobs=self.n_jobs, params=fit_params
        )
        self.oof_predictions_ = _as_columns(out_of_fold)
        self.n_features_out_ = self.oof_predictions_.shape[1]
        self.estimator_ = clone(self.estimator).fit(X, y, **fit_params)
        return self

    def fit_transform(self, X, y, groups=None, **fit_params) -> np.ndarray:
        """Fit (see :meth:`fit`); return the out-of-fold predictions of the training rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        groups : array-like of shape (n_samples,) or None, default=None
            Group labels (the lot, the item, the object a row shows): rows of one
            group always land in the same fold, so a re-listed lot never hands its
            own target to its other listing. With an int ``cv`` they select
            :class:`~sklearn.model_selection.GroupKFold`; a group splitter passed as
            ``cv`` receives them. Routed by scikit-learn's metadata routing too
            (``set_fit_request(groups=True)``).
        **fit_params : dict
            Passed to the estimator's ``fit``.

        Returns
        -------
        predictions : ndarray of shape (n_samples, n_outputs)
            Row i predicted by an estimator fitted on the folds without row i; one
            column per target, or per class with ``predict_proba``. A copy of
            ``oof_predictions_``.
        """
        return self.fit(X, y, groups, **fit_params).oof_predictions_.copy()

    def transform(self, X) -> np.ndarray:
        """Predict new rows with the estimator fitted on all training rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        predictions : ndarray of shape (n_samples, n_outputs)
        """
        check_is_fitted(self, "estimator_")
        X = validate_data(self, X, reset=False, ensure_all_finite=self._ensure_all_finite())
        return _as_columns(getattr(self.estimator_, self.method)(X))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``<estimator>_<method>``, or one name per class or target when there are several.

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "n_features_out_")
        stem = f"{type(self.estimator_).__name__.lower()}_{self.method}"
        if self.n_features_out_ == 1:
            return np.asarray([stem], dtype=object)
        labels = getattr(self.estimator_, "classes_", None)
        if labels is None or self.method == "predict" or len(labels) != self.n_features_out_:
            labels = range(self.n_features_out_)
        return np.asarray([f"{stem}_{label}" for label in labels], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = get_tags(self.estimator).input_tags.allow_nan
        tags.target_tags.required = True
        return tags

    # -- internals -------------------------------------------------------------

    def _ensure_all_finite(self) -> bool | str:
        return "allow-nan" if get_tags(self.estimator).input_tags.allow_nan else True

    def _folds(self, y, groups=None):
        return fold_splitter(
            self.cv, y, classifier=is_classifier(self.estimator), shuffle=self.shuffle, random_state=self.random_state,
            groups=groups,
        )


def fold_splitter(cv, y=None, *, classifier: bool = False, shuffle: bool = True, random_state=None, groups=None):
    """The cross-validation splitter behind every out-of-fold step of the package.

    Shared by :class:`OutOfFoldPredictor`, :class:`~skimgfeat.CrossFittedTransformer` and
    :class:`~skimgfeat.VisualComparables`, so that the same ``cv``, ``shuffle`` and
    ``random_state`` give the same folds in each.

    Parameters
    ----------
    cv : int, cross-validation generator or iterable
        An int gives :class:`~sklearn.model_selection.KFold` (or
        :class:`~sklearn.model_selection.StratifiedKFold` when ``classifier``), or with
        ``groups`` :class:`~sklearn.model_selection.GroupKFold` (or
        :class:`~sklearn.model_selection.StratifiedGroupKFold`), shuffled when
        ``shuffle``; anything else goes through :func:`~sklearn.model_selection.check_cv`.
    y : array-like or None, default=None
        The target, for stratification.
    classifier : bool, default=False
        Stratify by class (only when ``cv`` is an int).
    shuffle : bool, default=True
        Shuffle the rows before splitting (only when ``cv`` is an int).
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling.
    groups : array-like or None, default=None
        Group labels: only whether there are any matters here (pass them to ``split``).

    Returns
    -------
    splitter : cross-validation generator

    Examples
    --------
    >>> from skimgfeat.tabular.stacking import fold_splitter
    >>> fold_splitter(3, random_state=0)
    KFold(n_splits=3, random_state=0, shuffle=True)
    """
    if not isinstance(cv, (int, np.integer)) or isinstance(cv, bool):
        return check_cv(cv, y, classifier=classifier)
    if groups is not None:
        splitter = StratifiedGroupKFold if classifier else GroupKFold
    else:
        splitter = StratifiedKFold if classifier else KFold
    return splitter(n_splits=int(cv), shuffle=shuffle, random_state=random_state if shuffle else None)


def fold_indices(splitter, X, y=None, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) rows of ``splitter`` on X; ``groups`` go to ``split`` when given.

    A splitter that needs groups (``GroupKFold``) and gets none says so, naming the
    parameter, rather than splitting a group across folds.
    """
    if groups is None:
        return list(splitter.split(X, y))
    groups = np.asarray(groups)
    if len(groups) != _num_samples(X):
        raise ValueError(f"groups has {len(groups)} labels but X has {_num_samples(X)} rows")
    return list(splitter.split(X, y, groups))


def _as_columns(predictions) -> np.ndarray:
    predictions = np.asarray(predictions)
    return predictions.reshape(-1, 1) if predictions.ndim == 1 else predictions
