"""CrossFittedTransformer: a transformer that learns from y, applied out-of-fold to its own training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context, clone
from sklearn.utils import _safe_indexing, get_tags
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.validation import _num_samples, check_is_fitted

from ..engine.ragged import RaggedPhotos, is_ragged
from .stacking import fold_indices, fold_splitter


class CrossFittedTransformer(TransformerMixin, BaseEstimator):
    """Fit a supervised transformer so that no training row is transformed by a model that saw it.

    A transformer fitted on y, such as :class:`~skimgfeat.CNNImageEmbedder` with
    ``fine_tune``, transforms its own training rows into features that look far more
    predictive than they are on new rows: the network was just trained to map exactly
    those photos to exactly those targets. The next step of a
    :class:`~sklearn.pipeline.Pipeline` is fitted on them and learns to trust them too
    much. This wrapper cross-fits, as :class:`~skimgfeat.OutOfFoldPredictor` does for
    predictions:

    * ``fit_transform(X, y)`` splits the rows into ``cv`` folds; each fold is transformed
      by a clone of ``transformer`` fitted on the other folds (**out-of-fold** outputs).
      Inside a Pipeline this is what the next step is fitted on;
    * a final clone is fitted on all rows (``transformer_``) and ``transform(X)``
      transforms new rows with it: what the next step sees at predict time.

    Cost: ``fit_transform`` fits the transformer ``cv + 1`` times (one per fold, each on
    ``(cv - 1) / cv`` of the rows, and once on all rows), and transforms each training
    row once; ``fit`` alone fits only the final clone. With fine-tuning, keep
    ``fine_tune_epochs`` and the image size small and ``cv`` at 3-5 (see
    ``docs/tabular.md`` for what that costs and gains).

    Parameters
    ----------
    transformer : transformer object
        Any scikit-learn transformer (or Pipeline ending in one), cloned before fitting.
        Its input is passed through untouched (photo paths, lists of photos per row, a
        DataFrame), indexed by rows.
    cv : int, cross-validation generator or iterable, default=5
        The folds; an int gives a :class:`~sklearn.model_selection.KFold` (see
        :func:`skimgfeat.tabular.stacking.fold_splitter`). Folds must cover every row once.
    shuffle : bool, default=True
        Shuffle the rows before splitting into folds (only when ``cv`` is an int).
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling of the folds (the transformer's own ``random_state`` seeds it).

    Attributes
    ----------
    transformer_ : transformer object
        The clone fitted on all training rows; used by ``transform``.
    n_splits_ : int
        Folds used by the last ``fit_transform`` (0 after ``fit`` alone).
    n_features_in_ : int
        The fitted transformer's, when it has one.

    See Also
    --------
    OutOfFoldPredictor : The same pattern for an estimator's predictions.
    sklearn.preprocessing.TargetEncoder : The same pattern for categories.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import TargetEncoder
    >>> from skimgfeat import CrossFittedTransformer
    >>> X = np.array([["a"], ["a"], ["b"], ["b"], ["a"], ["b"]])
    >>> y = np.array([1.0, 2.0, 10.0, 11.0, 3.0, 12.0])
    >>> crossfit = CrossFittedTransformer(TargetEncoder(target_type="continuous"), cv=3, random_state=0)
    >>> crossfit.fit_transform(X, y).shape
    (6, 1)
    >>> crossfit.transform(np.array([["a"]])).shape
    (1, 1)
    """

    _parameter_constraints: dict = {
        "transformer": [HasMethods(["fit", "transform"])],
        "cv": ["cv_object"],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, transformer, *, cv=5, shuffle: bool = True, random_state=None) -> None:
        self.transformer = transformer
        self.cv = cv
        self.shuffle = shuffle
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, groups=None, **fit_params) -> CrossFittedTransformer:
        """Fit one clone of the transformer on all rows (no out-of-fold outputs: one fit).

        Parameters
        ----------
        X : the transformer's input, indexable by rows
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        groups : ignored
            Only ``fit_transform``'s folds use them.
        **fit_params : dict
            Passed to the transformer's ``fit``.

        Returns
        -------
        self : CrossFittedTransformer
        """
        self.transformer_ = clone(self.transformer).fit(X, y, **fit_params)
        self.n_splits_ = 0
        return self

    @_fit_context(prefer_skip_nested_validation=False)
    def fit_transform(self, X, y=None, groups=None, **fit_params):
        """Out-of-fold outputs of the training rows; also fit the final clone on all rows.

        Parameters
        ----------
        X : the transformer's input, indexable by rows
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        groups : array-like of shape (n_samples,) or None, default=None
            Group labels (the lot, the item, the object a row shows): rows of one
            group always land in the same fold, so a re-listed lot never hands its
            own target to its other listing. With an int ``cv`` they select
            :class:`~sklearn.model_selection.GroupKFold`; a group splitter passed as
            ``cv`` receives them. Routed by scikit-learn's metadata routing too
            (``set_fit_request(groups=True)``).
        **fit_params : dict
            Passed to the transformer's ``fit`` (per-row arrays are split with the rows).

        Returns
        -------
        features : array or DataFrame, as the transformer returns
            Row i transformed by a clone fitted on the folds without row i. Photos per
            row (:class:`~skimgfeat.RaggedPhotos`) stay ragged; 3-D arrays
            are NaN-padded to the widest fold.
        """
        if hasattr(X, "__array__") and not hasattr(X, "__getitem__"):
            X = np.asarray(X)  # array-likes that cannot be indexed by rows
        n_rows = _n_rows(X)
        positions, parts = [], []
        splitter = fold_splitter(self.cv, y, shuffle=self.shuffle, random_state=self.random_state, groups=groups)
        folds = fold_indices(splitter, np.zeros((n_rows, 1)), y, groups)
        covered = np.sort(np.concatenate([test for _, test in folds]))
        if not np.array_equal(covered, np.arange(n_rows)):
            raise ValueError("cv must put every row in exactly one test fold (a partition, as KFold does)")
        for train, test in folds:
            fold = clone(self.transformer).fit(
                _rows(X, train), _rows(y, train), **_split_params(fit_params, train, n_rows)
            )
            parts.append(fold.transform(_rows(X, test)))
            positions.append(test)
        self.transformer_ = clone(self.transformer).fit(X, y, **fit_params)
        self.n_splits_ = len(folds)
        return _reassemble(parts, np.concatenate(positions))

    def transform(self, X):
        """Transform new rows with the clone fitted on all training rows.

        Parameters
        ----------
        X : the transformer's input

        Returns
        -------
        features : what the transformer returns
        """
        check_is_fitted(self, "transformer_")
        return self.transformer_.transform(X)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The fitted transformer's output names.

        Parameters
        ----------
        input_features : array-like of str or None
            Passed to the transformer's ``get_feature_names_out``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "transformer_")
        return self.transformer_.get_feature_names_out(input_features)

    @property
    def n_features_in_(self) -> int:
        """The fitted transformer's ``n_features_in_`` (AttributeError when it has none)."""
        return self.transformer_.n_features_in_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.transformer)
        tags.input_tags = inner.input_tags
        tags.target_tags.required = inner.target_tags.required
        return tags


def _n_rows(X) -> int:
    return _num_samples(X)


def _rows(values, rows):
    if values is None:
        return None
    return values.take(rows) if is_ragged(values) else _safe_indexing(values, rows)


def _split_params(params: dict, rows: np.ndarray, n_rows: int) -> dict:
    """Per-row fit parameters (sample_weight, ...) follow the rows; the others pass as they are."""
    return {
        name: _safe_indexing(value, rows) if _n_rows_or_none(value) == n_rows else value
        for name, value in params.items()
    }


def _n_rows_or_none(value) -> int | None:
    try:
        return _n_rows(value) if not isinstance(value, (str, bytes, dict)) else None
    except TypeError:
        return None


def _reassemble(parts: list, positions: np.ndarray):
    """The folds' outputs stacked, then put back in row order."""
    order = np.argsort(positions, kind="stable")
    if all(isinstance(part, pd.DataFrame) for part in parts):
        return pd.concat(parts).iloc[order]
    if all(is_ragged(part) for part in parts):  # photos per row, never padded
        return RaggedPhotos.concatenate(parts).take(order)
    arrays = [np.asarray(part) for part in parts]
    if arrays[0].ndim == 3:  # photos per row: folds may differ in their most photos per row
        width = max(array.shape[1] for array in arrays)
        arrays = [_pad_photos(array, width) for array in arrays]
    return np.concatenate(arrays)[order]


def _pad_photos(array: np.ndarray, width: int) -> np.ndarray:
    missing = width - array.shape[1]
    if not missing:
        return array
    padding = np.full((array.shape[0], missing, array.shape[2]), np.nan, dtype=np.result_type(array, np.float32))
    return np.concatenate([array.astype(padding.dtype), padding], axis=1)
