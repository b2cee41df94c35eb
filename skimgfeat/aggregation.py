"""ItemAggregator: several photos per item -> one feature row per item."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import FLOAT_DTYPES, check_array, validate_data

from .engine.ragged import RaggedPhotos, is_ragged
from .schema import COUNT_COLUMN, FEATURE_PREFIX, ITEM_ID, NAME_COLUMNS, feature_names, image_number, item_id_from_name
from .storage.output import OutputContainerMixin, wrap_output

METHODS = ("mean", "max", "first")


class ItemAggregator(OutputContainerMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Reduce the photos of each item to one feature row: mean, max or first.

    Photos whose features are NaN (images that failed to load) are ignored; an item
    with no valid photo becomes a NaN row, so rows stay aligned with ``y``
    (scikit-learn's tree ensembles, e.g. ``RandomForestRegressor``, accept NaN).

    Two input forms:

    * the output of :class:`~skimgfeat.CNNImageEmbedder` for several photos per item:
      the photos' rows grouped by item (:class:`~skimgfeat.RaggedPhotos`,
      memory in proportion to the photos), or a ``(n_items, max_images, n_features)``
      NaN-padded array, or a 2-D array (one photo per item). Returns
      ``(n_items, n_features)``, row i for item i;
    * a per-image table (DataFrame) with ``img_feature_*`` columns and an ``item_id``
      column, or ``image_name``/``image_path`` from which the item id is derived.
      Returns a DataFrame with ``item_id`` and the feature columns, one row per item,
      sorted by ``item_id``.

    Parameters
    ----------
    method : {"mean", "max", "first"}, default="mean"
        ``"mean"`` and ``"max"`` skip NaN feature by feature (a feature one photo lacks,
        e.g. the JPEG quality of a PNG, does not blank the item's). ``"first"`` takes
        the first photo that loaded, whole, NaN features included: in array input, the
        first along axis 1; in a table, the one with the lowest image number (``_1``
        before ``_2`` before ``_10``), not file-system order.
    item_id : None, str or callable, default=None
        Table input only. None: the ``item_id`` column if there is one, else
        :func:`item_id_from_name` of ``image_name`` (or ``image_path``). A str naming a
        column: that column. Another str: a regular expression searched in the image
        name, whose group ``item`` (or first group, or whole match) is the item id. A
        callable: called with each image name.
    count_images : bool, default=False
        Add a column ``n_images``: how many photos of the item loaded.

    Attributes
    ----------
    n_features_in_ : int
        Feature width seen in ``fit``.
    feature_names_in_ : ndarray of str
        Feature column names, when fit on a DataFrame.
    table_input_ : bool
        Whether ``fit`` saw a per-image table; its output then starts with ``item_id``.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import ItemAggregator
    >>> photos = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [np.nan, np.nan]]])
    >>> ItemAggregator(method="mean").fit_transform(photos)
    array([[2., 3.],
           [5., 6.]])
    """

    _parameter_constraints: dict = {
        "method": [StrOptions(set(METHODS))],
        "item_id": [None, str, callable],
        "count_images": ["boolean"],
    }

    def __init__(
        self,
        method: str = "mean",
        *,
        item_id: str | Callable[[str], str] | None = None,
        count_images: bool = False,
    ) -> None:
        self.method = method
        self.item_id = item_id
        self.count_images = count_images

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> ItemAggregator:
        """Check the parameters and record the feature width (and names, for tables)."""
        self.table_input_ = isinstance(X, pd.DataFrame) and self._is_table(X)
        if self.table_input_:
            columns = _feature_columns(X, self._id_column(X))
            self.feature_names_in_ = np.asarray(columns, dtype=object)
            self.n_features_in_ = len(columns)
        else:
            self._validated_photos(X, reset=True)
        return self

    def transform(self, X):
        """Aggregate; see the class docstring for input and output forms."""
        self._validate_params()  # no fit is needed, so it may not have checked them
        if isinstance(X, pd.DataFrame) and self._is_table(X):
            return self._aggregate_table(X)
        index = X.index if isinstance(X, pd.DataFrame) else None
        photos = self._validated_photos(X, reset=False)
        values, counts = reduce_photos(photos, self.method)
        if self.count_images:
            values = np.column_stack([values, counts.astype(values.dtype)])
        names = self.get_feature_names_out() if hasattr(self, "n_features_in_") else None
        if names is None or len(names) != values.shape[1]:
            names = _default_names(photos.shape[-1], self.count_images)
        return wrap_output(values, index, names, self._output_kind())

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The output's columns: ``item_id`` for tables, the input's feature names
        (``img_feature_*`` by default), then ``n_images`` with ``count_images``."""
        if input_features is None:
            input_features = getattr(self, "feature_names_in_", None)
        if input_features is None:
            names = list(_default_names(self.n_features_in_, self.count_images))
        else:
            names = list(input_features) + ([COUNT_COLUMN] if self.count_images else [])
        if getattr(self, "table_input_", False):
            names = [ITEM_ID, *names]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.allow_nan = True
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.target_tags.required = False
        return tags

    # -- internals -------------------------------------------------------------

    def _validated_photos(self, X, reset: bool) -> np.ndarray | RaggedPhotos:
        """X as photos grouped by item: a RaggedPhotos or a ``(n_items, max_images, n_features)`` float array.

        ``reset`` (fit) records ``n_features_in_`` (and a DataFrame's column names);
        otherwise a fitted aggregator refuses another feature width.
        """
        fitted = hasattr(self, "n_features_in_")
        if is_ragged(X):
            values = X if X.dtype.kind == "f" else X.astype(np.float64)
            self._check_width(values.n_features, reset, fitted)
            return values
        values = check_array(X, allow_nd=True, ensure_all_finite="allow-nan", dtype=FLOAT_DTYPES)
        if values.ndim == 2:
            if reset or fitted:  # a transform before any fit (none is needed) has nothing to check
                values = validate_data(self, X, reset=reset, ensure_all_finite="allow-nan", dtype=FLOAT_DTYPES)
            return values[:, None, :]
        if values.ndim != 3:
            raise ValueError(
                f"expected a (n_items, max_images, n_features) or (n_items, n_features) array, got shape {values.shape}"
            )
        self._check_width(values.shape[2], reset, fitted)
        return values

    def _check_width(self, n_features: int, reset: bool, fitted: bool) -> None:
        if reset:
            self.n_features_in_ = n_features
            self.__dict__.pop("feature_names_in_", None)  # names of an earlier fit no longer apply
        elif fitted and n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )

    def _id_column(self, table: pd.DataFrame) -> str | None:
        if isinstance(self.item_id, str) and self.item_id in table.columns:
            return self.item_id
        if self.item_id is None and ITEM_ID in table.columns:
            return ITEM_ID
        return None

    def _name_column(self, table: pd.DataFrame) -> str | None:
        return next((c for c in NAME_COLUMNS if c in table.columns), None)

    def _is_table(self, table: pd.DataFrame) -> bool:
        return self._id_column(table) is not None or self._name_column(table) is not None

    def _item_ids(self, table: pd.DataFrame) -> pd.Series:
        column = self._id_column(table)
        if column is not None:
            return table[column].astype(str)
        names = table[self._name_column(table)].astype(str)
        if self.item_id is None:
            return names.map(item_id_from_name)
        if callable(self.item_id):
            return names.map(lambda name: str(self.item_id(name)))
        pattern = re.compile(self.item_id)
        return names.map(lambda name: _regex_item_id(pattern, name))

    def _aggregate_table(self, table: pd.DataFrame) -> pd.DataFrame:
        columns = _feature_columns(table, self._id_column(table))
        ids = self._item_ids(table)
        name_column = self._name_column(table)
        order = np.arange(len(table))
        if self.method == "first" and name_column is not None:
            keys = [image_number(name) for name in table[name_column].astype(str)]
            order = np.asarray(sorted(range(len(table)), key=lambda i: keys[i]), dtype=int)
        features = table[columns].iloc[order].reset_index(drop=True)
        keys = ids.iloc[order].to_numpy()
        loaded = features.notna().any(axis=1)
        if self.method == "first":
            result = _first_loaded_rows(features, keys, loaded.to_numpy())
        else:
            result = getattr(features.groupby(keys, sort=True), self.method)()
        result.index.name = ITEM_ID
        if self.count_images:
            result[COUNT_COLUMN] = loaded.groupby(keys, sort=True).sum().astype(int)
        return result.reset_index()


def _first_loaded_rows(features: pd.DataFrame, keys: np.ndarray, loaded: np.ndarray) -> pd.DataFrame:
    """Per item (sorted), its first row that loaded, whole; NaN for an item with none.

    Not ``groupby().first()``: that takes the first number of each column on its own,
    mixing photos (sharpness of photo 1 beside the JPEG quality of photo 2).
    """
    candidates = features[loaded].set_axis(keys[loaded])
    firsts = candidates[~candidates.index.duplicated(keep="first")]
    return firsts.reindex(pd.Index(np.unique(keys.astype(str)), dtype=object))


def _regex_item_id(pattern: re.Pattern, name: str) -> str:
    match = pattern.search(name)
    if match is None:
        raise ValueError(f"item_id pattern {pattern.pattern!r} does not match image name {name!r}")
    if "item" in pattern.groupindex:
        return match.group("item")
    return match.group(1) if pattern.groups else match.group(0)


def _feature_columns(table: pd.DataFrame, id_column: str | None) -> list[str]:
    prefixed = [c for c in table.columns if str(c).startswith(FEATURE_PREFIX)]
    if prefixed:
        return prefixed
    skip = {id_column, *NAME_COLUMNS}
    return [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])]


def _default_names(n_features: int, count_images: bool) -> np.ndarray:
    names = feature_names(n_features)
    return np.append(names, COUNT_COLUMN) if count_images else names


def reduce_photos(photos: np.ndarray | RaggedPhotos, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Photos grouped by item -> ``(n_items, d)`` and the count of valid photos per item.

    ``photos``: a :class:`~skimgfeat.RaggedPhotos` or a ``(n, k, d)``
    NaN-padded array. A photo is valid when any of its features is a number. "mean" and
    "max" skip NaN feature by feature, as the table form's ``groupby`` does (a feature a
    photo lacks, e.g. the JPEG quality of a PNG, does not blank the item's); "first"
    takes the first valid photo whole. Works on the photos' rows (memory in proportion
    to the photos, never items x the largest item).
    """
    ragged = photos if is_ragged(photos) else RaggedPhotos.from_padded(photos)
    values, n_items = ragged.values, ragged.n_items
    present = ~np.isnan(values)
    valid = present.any(axis=1)
    filled = ragged.counts > 0
    starts = ragged.offsets[:-1][filled]  # reduceat needs non-empty segments
    counts = np.zeros(n_items, dtype=np.intp)
    out = np.full((n_items, ragged.n_features), np.nan, dtype=values.dtype)
    if not len(starts):
        return out, counts
    counts[filled] = np.add.reduceat(valid.astype(np.intp), starts)
    if method == "first":
        rows = np.flatnonzero(valid)
        items, first = np.unique(ragged.item_of_row[rows], return_index=True)
        out[items] = values[rows[first]]
        return out, counts
    n_present = np.add.reduceat(present.astype(np.intp), starts, axis=0)
    if method == "mean":
        summed = np.add.reduceat(np.where(present, values, 0), starts, axis=0, dtype=np.float64)
        reduced = summed / np.maximum(n_present, 1)
    else:
        reduced = np.maximum.reduceat(np.where(present, values, -np.inf), starts, axis=0)
    reduced[n_present == 0] = np.nan
    out[filled] = reduced
    return out, counts
