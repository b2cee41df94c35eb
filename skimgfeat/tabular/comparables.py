"""VisualComparables: the target of the visually nearest training rows, as a feature."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted

from ..engine.ragged import RaggedPhotos, is_ragged
from ..schema import ITEM_ID
from .stacking import fold_indices, fold_splitter

# Below this cosine distance a neighbour is the same picture: it gets all the weight.
SAME_PICTURE = 1e-6


class VisualComparables(TransformerMixin, BaseEstimator):
    """Price an item from its comparables: the targets of the training items that look most like it.

    An appraiser prices a lot from the prices of the most similar past lots. This
    transformer does it with photo features: each row gets the (distance-weighted) mean
    target of its ``n_neighbors`` nearest training rows by cosine distance, one column
    that a tabular model can use beside its other columns (in a
    :class:`~sklearn.compose.ColumnTransformer`).

    Computed naively on the training rows, each row would find itself at distance 0 and
    hand its own target to the next model. So, as :class:`~skimgfeat.OutOfFoldPredictor`:

    * ``fit_transform(X, y)`` is **out-of-fold**: a row of one fold looks for its
      neighbours only among the rows of the other folds; no row's own target reaches its
      own feature;
    * ``fit`` keeps all training rows and their targets, and ``transform(X)`` looks for
      the neighbours of new rows among all of them.

    Several photos per item: pass the embedder's output (the photos' rows grouped by
    item, :class:`~skimgfeat.RaggedPhotos`, or a NaN-padded ``(n_items, n_photos,
    n_features)`` array), or ``ItemAggregator``'s one row per item, or per-photo-slot
    columns side by side (e.g. bathroom, bedroom, frontal, kitchen). Each photo is scaled to unit length
    and the photos of an item are averaged (NaN photos skipped) before the cosine.

    Parameters
    ----------
    n_neighbors : int, default=5
        Comparables per row (fewer when the training folds have fewer rows).
    weights : {"uniform", "distance"}, default="distance"
        ``"distance"`` weights each comparable by the inverse of its cosine distance (a
        neighbour at distance 0 takes all the weight), as
        :class:`~sklearn.neighbors.KNeighborsRegressor` does.
    cv : int, cross-validation generator or iterable, default=5
        Folds for ``fit_transform`` (see :func:`skimgfeat.tabular.stacking.fold_splitter`).
    shuffle : bool, default=True
        Shuffle the rows before splitting into folds (only when ``cv`` is an int).
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling of the folds.
    algorithm : {"exact", "index"}, default="exact"
        ``"exact"``: every cosine in memory (a matrix product; fine up to some ten
        thousand training rows). ``"index"``: search a :class:`~skimgfeat.SimilarityIndex`
        built on the training rows (its ``search_vectors`` when it has one, else ``search``).

    Attributes
    ----------
    directions_ : ndarray of shape (n_train, n_features)
        Unit-length feature direction of each training row (NaN rows left out).
    targets_ : ndarray of shape (n_train, n_targets)
        Their targets.
    n_features_in_ : int
        Feature width (the last axis of X).
    n_targets_ : int
        Number of target columns, hence of output columns.

    See Also
    --------
    sklearn.neighbors.KNeighborsRegressor : The same average, as a final model.
    SimilarityIndex : Named vectors searchable by cosine distance.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import VisualComparables
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> y = np.array([100.0, 110.0, 5.0, 6.0])
    >>> comparables = VisualComparables(n_neighbors=1, cv=2, random_state=0)
    >>> comparables.fit_transform(X, y).shape
    (4, 1)
    >>> comparables.transform(np.array([[1.0, 0.05]]))
    array([[100.]])
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "weights": [StrOptions({"uniform", "distance"})],
        "cv": ["cv_object"],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "algorithm": [StrOptions({"exact", "index"})],
    }

    def __init__(
        self,
        n_neighbors: int = 5,
        *,
        weights: str = "distance",
        cv=5,
        shuffle: bool = True,
        random_state=None,
        algorithm: str = "exact",
    ) -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.cv = cv
        self.shuffle = shuffle
        self.random_state = random_state
        self.algorithm = algorithm

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None) -> VisualComparables:
        """Keep the training rows' feature directions and targets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_photos, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        groups : ignored
            Accepted so that ``fit`` and ``fit_transform`` take the same arguments:
            only ``fit_transform``'s folds use them.

        Returns
        -------
        self : VisualComparables
        """
        directions, targets = self._training_rows(X, y)
        valid = ~np.isnan(directions).any(axis=1)
        self.directions_ = directions[valid]
        self.targets_ = targets[valid]
        self._index = None
        return self

    def fit_transform(self, X, y, groups=None) -> np.ndarray:
        """Out-of-fold comparables of the training rows; also keep all rows for ``transform``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_photos, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        groups : array-like of shape (n_samples,) or None, default=None
            Group labels (the lot, the item, the object a row shows): rows of one
            group always land in the same fold, so a re-listed lot never hands its
            own target to its other listing. With an int ``cv`` they select
            :class:`~sklearn.model_selection.GroupKFold`; a group splitter passed as
            ``cv`` receives them. Routed by scikit-learn's metadata routing too
            (``set_fit_request(groups=True)``).

        Returns
        -------
        comparables : ndarray of shape (n_samples, n_targets)
            Row i: the weighted mean target of its nearest rows among the folds
            without row i; NaN for a row without valid features.
        """
        self.fit(X, y)
        directions, targets = self._training_rows(X, y)
        out = np.full((len(directions), targets.shape[1]), np.nan)
        splitter = fold_splitter(self.cv, targets, shuffle=self.shuffle, random_state=self.random_state,
                                 groups=groups)
        for train, test in fold_indices(splitter, directions, targets, groups):
            valid = train[~np.isnan(directions[train]).any(axis=1)]
            out[test] = self._comparables(directions[test], directions[valid], targets[valid])
        return out

    def transform(self, X) -> np.ndarray:
        """Comparables of new rows among all training rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_photos, n_features)

        Returns
        -------
        comparables : ndarray of shape (n_samples, n_targets)
        """
        check_is_fitted(self, "directions_")
        directions = self._directions(X, reset=False)
        return self._comparables(directions, self.directions_, self.targets_, use_fitted_index=True)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``comparables_target``, or ``comparables_target_<j>`` for several targets.

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "n_targets_")
        if self.n_targets_ == 1:
            return np.asarray(["comparables_target"], dtype=object)
        return np.asarray([f"comparables_target_{j}" for j in range(self.n_targets_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.three_d_array = True
        tags.target_tags.required = True
        return tags

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_index"] = None  # rebuilt on demand
        return state

    # -- internals -------------------------------------------------------------

    def _training_rows(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        if y is None:
            raise ValueError("VisualComparables requires y to be passed, but the target y is None")
        directions = self._directions(X, reset=True)
        targets = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        targets = targets.reshape(-1, 1) if targets.ndim == 1 else targets
        if len(targets) != len(directions):
            raise ValueError(f"X has {len(directions)} rows but y has {len(targets)}")
        self.n_targets_ = targets.shape[1]
        return directions, targets

    def _directions(self, X, reset: bool) -> np.ndarray:
        """One unit-length row per item: photos scaled to unit length, averaged, scaled again."""
        if is_ragged(X):
            n_features = X.n_features
        else:
            X = check_array(X, allow_nd=True, ensure_all_finite="allow-nan", dtype=np.float64)
            if X.ndim not in (2, 3):
                raise ValueError(
                    f"X must be 2-D (items x features) or 3-D (items x photos x features), got {X.ndim}-D"
                )
            n_features = X.shape[-1]
        if reset:
            self.n_features_in_ = n_features
        elif n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but VisualComparables is expecting "
                f"{self.n_features_in_} features as input."
            )
        if is_ragged(X) or X.ndim == 3:
            return _unit(_mean_photo_direction(X if is_ragged(X) else RaggedPhotos.from_padded(X)))
        return _unit(X)

    def _comparables(self, queries, directions, targets, use_fitted_index: bool = False) -> np.ndarray:
        out = np.full((len(queries), targets.shape[1]), np.nan)
        valid = ~np.isnan(queries).any(axis=1)
        if not valid.any() or not len(directions):
            return out
        k = min(self.n_neighbors, len(directions))
        if self.algorithm == "index":
            index = self._fitted_index() if use_fitted_index else _similarity_index(directions)
            distances, rows = _search_index(index, queries[valid], k)
        else:
            distances, rows = _search_exact(queries[valid], directions, k)
        out[valid] = _weighted_mean(targets[rows], distances, self.weights)
        return out

    def _fitted_index(self):
        if getattr(self, "_index", None) is None:
            self._index = _similarity_index(self.directions_)
        return self._index


def _unit(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, features / norms, np.nan)


def _mean_photo_direction(photos: RaggedPhotos) -> np.ndarray:
    """Per item, the mean of its photos scaled to unit length (photos with a NaN skipped; none: NaN)."""
    units = _unit(photos.values.astype(np.float64))
    valid = ~np.isnan(units).any(axis=1)
    rows = np.flatnonzero(valid)
    items = photos.item_of_row[rows]
    summed = np.zeros((photos.n_items, photos.n_features))
    if len(rows):
        present, starts = np.unique(items, return_index=True)  # items of the rows are sorted
        summed[present] = np.add.reduceat(units[rows], starts, axis=0)
    count = np.bincount(items, minlength=photos.n_items)[:, None]
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, summed / np.maximum(count, 1), np.nan)


def _search_exact(queries: np.ndarray, directions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances and rows of the k nearest directions, nearest first."""
    distances = np.clip(1.0 - queries @ directions.T, 0.0, 2.0)
    rows = np.argpartition(distances, k - 1, axis=1)[:, :k]
    nearest = np.take_along_axis(distances, rows, axis=1)
    order = np.argsort(nearest, axis=1, kind="stable")
    return np.take_along_axis(nearest, order, axis=1), np.take_along_axis(rows, order, axis=1)


def _similarity_index(directions: np.ndarray):
    from ..search.similarity import SimilarityIndex

    return SimilarityIndex([str(row) for row in range(len(directions))], directions, key=ITEM_ID)


def _search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(index, "search_vectors"):
        distances, rows = index.search_vectors(queries, k)
        return np.asarray(distances, dtype=np.float64), np.asarray(rows)
    found = index.search(queries, k)
    rows = found[ITEM_ID].astype(int).to_numpy().reshape(len(queries), k)
    return found["distance"].to_numpy(dtype=np.float64).reshape(len(queries), k), rows


def _weighted_mean(neighbour_targets: np.ndarray, distances: np.ndarray, weights: str) -> np.ndarray:
    """neighbour_targets: (n_queries, k, n_targets); distances: (n_queries, k)."""
    if weights == "uniform":
        weight = np.ones_like(distances)
    else:
        same = distances < SAME_PICTURE
        with np.errstate(divide="ignore"):
            weight = np.where(same.any(axis=1, keepdims=True), same.astype(float), 1.0 / distances)
    weight = weight / weight.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkt->qt", weight, neighbour_targets)
