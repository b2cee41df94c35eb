"""Similar items and duplicate photos: nearest neighbours by cosine distance in a feature table.

A :class:`SimilarityIndex` holds the feature vectors of a table written by
``skimgfeat extract`` (one row per photo, keyed by ``image_path``, or one per item,
keyed by ``item_id``) and answers two questions with scikit-learn's exact
:class:`~sklearn.neighbors.NearestNeighbors`: which rows are nearest to a query
(:meth:`SimilarityIndex.search`, :func:`similar_items`), and which rows are near-copies
of each other (:func:`skimgfeat.uses.duplicates.find_duplicates`). The search is exact (brute force); for millions
of rows an approximate index is the step beyond it (see docs/similarity.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..aggregation import ITEM_ID, ItemAggregator, image_number, item_id_from_name
from ..model_info import fitted_embedder_from_model_info
from ..storage.io import read_model_info, read_table
from ..storage.output import FEATURE_PREFIX

IMAGE_PATH = "image_path"
KEY_COLUMNS = (IMAGE_PATH, ITEM_ID)
SEARCH_COLUMNS = ("query", "rank", "distance")


class SimilarityIndex:
    """Named feature vectors searchable by cosine distance.

    Parameters
    ----------
    names : sequence of str
        One name per row: an ``image_path`` or an ``item_id``.
    vectors : array-like of shape (n_rows, n_features)
        Rows with a NaN (photos that failed to load) are left out of the index.
    key : {"image_path", "item_id"}, default="image_path"
        What the names are: the column of the result tables.
    model_info : dict or None, default=None
        What produced the vectors (a table's model info): needed to embed new photos
        as queries, see :func:`embedder_from_model_info`.
    photos : mapping from name to photo path, or None
        The photo that shows each name (for contact sheets). Relative paths are
        resolved against ``image_dir``.
    image_dir : str, os.PathLike or None
        The folder the table's ``image_path`` values are relative to.

    Attributes
    ----------
    names : ndarray of str
        The names of the indexed rows, in table order.
    vectors : ndarray of shape (n_rows, n_features)
    n_skipped : int
        Rows left out because their features were NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.uses.similarity import SimilarityIndex
    >>> index = SimilarityIndex(["a.jpg", "b.jpg", "c.jpg"], np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    >>> index.similar(["a.jpg"], k=2)
       query  rank image_path  distance
    0  a.jpg     1      b.jpg  0.006116
    1  a.jpg     2      c.jpg  1.000000
    """

    def __init__(
        self,
        names: Sequence[str],
        vectors,
        *,
        key: str = IMAGE_PATH,
        model_info: dict | None = None,
        photos: dict | None = None,
        image_dir: str | os.PathLike | None = None,
    ) -> None:
        if key not in KEY_COLUMNS:
            raise ValueError(f"key must be one of {KEY_COLUMNS}, got {key!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        names = np.asarray([str(name) for name in names], dtype=object)
        if vectors.ndim != 2 or len(vectors) != len(names):
            raise ValueError(f"need one 2-D feature row per name, got {len(names)} names and shape {vectors.shape}")
        valid = ~np.isnan(vectors).any(axis=1)
        self.names = names[valid]
        self.vectors = vectors[valid]
        self.n_skipped = int((~valid).sum())
        self.key = key
        self.model_info = model_info
        if photos is None:
            photos = {name: name for name in self.names} if key == IMAGE_PATH else {}
        self.photos = dict(photos)
        self.image_dir = None if image_dir is None else Path(image_dir)
        self._row_of = {name: row for row, name in enumerate(self.names)}
        self._neighbours = None

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        *,
        by_item: bool = False,
        model_info: dict | None = None,
        image_dir: str | os.PathLike | None = None,
    ) -> SimilarityIndex:
        """An index over a per-image or per-item feature table.

        Parameters
        ----------
        table : DataFrame
            ``img_feature_*`` columns and ``image_path`` (per image) or ``item_id``
            (per item), as written by ``skimgfeat extract``.
        by_item : bool, default=False
            Index items: a per-image table is first averaged per item
            (:class:`~skimgfeat.ItemAggregator`), each item shown by its first photo.
        model_info : dict or None
        image_dir : str, os.PathLike or None
            The folder of the photos, for contact sheets.
        """
        features = [column for column in table.columns if str(column).startswith(FEATURE_PREFIX)]
        if not features:
            raise ValueError(f"the table has no {FEATURE_PREFIX}* columns: not a skimgfeat feature table")
        key = next((column for column in KEY_COLUMNS if column in table.columns), None)
        if key is None:
            raise ValueError(f"the table has none of the columns {KEY_COLUMNS}: not a skimgfeat feature table")
        if by_item and key == IMAGE_PATH:
            photos = _first_photo_per_item(table[IMAGE_PATH].astype(str))
            items = ItemAggregator(method="mean").fit_transform(table[[IMAGE_PATH, *features]])
            return cls(items[ITEM_ID], items[features].to_numpy(), key=ITEM_ID, model_info=model_info,
                       photos=photos, image_dir=image_dir)
        photos = None
        if key == ITEM_ID and image_dir is not None:
            photos = _photos_of_items(Path(image_dir))
        return cls(table[key].astype(str), table[features].to_numpy(), key=key, model_info=model_info,
                   photos=photos, image_dir=image_dir)

    @classmethod
    def read(
        cls, path: str | os.PathLike, *, by_item: bool = False, image_dir: str | os.PathLike | None = None
    ) -> SimilarityIndex:
        """An index over a table file written by ``skimgfeat extract`` (Parquet or CSV).

        The model info comes from the Parquet metadata, else from ``model_info.json``
        beside the table. ``image_dir`` defaults to the photo folder recorded there.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature table {os.fspath(path)!r} does not exist")
        model_info = read_model_info(path) if path.suffix.lower() == ".parquet" else None
        beside = path.parent / "model_info.json"
        if model_info is None and beside.is_file():
            model_info = json.loads(beside.read_text(encoding="utf-8"))
        if image_dir is None:
            image_dir = (model_info or {}).get("image_dir")
        return cls.from_table(read_table(path), by_item=by_item, model_info=model_info, image_dir=image_dir)

    # -- queries ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return str(name) in self._row_of

    def vector(self, name: str) -> np.ndarray:
        """The feature vector of ``name``; KeyError if it is not indexed."""
        try:
            return self.vectors[self._row_of[str(name)]]
        except KeyError:
            raise KeyError(f"{name!r} is not a {self.key} of this table (or its features are NaN)") from None

    def search(
        self,
        vectors,
        k: int = 5,
        *,
        labels: Sequence[str] | None = None,
        exclude: Sequence[str | None] | None = None,
    ) -> pd.DataFrame:
        """The ``k`` nearest rows of each query vector.

        Parameters
        ----------
        vectors : array-like of shape (n_queries, n_features)
        k : int, default=5
        labels : sequence of str or None
            The ``query`` column of the result (default: ``"0"``, ``"1"``, ...).
        exclude : sequence of (str or None) or None
            Per query, a name never to return (the query itself when it is indexed).

        Returns
        -------
        DataFrame
            Columns ``query``, ``rank`` (1 = nearest), the key column and ``distance``
            (cosine distance, 0 for the same direction, 2 for opposite ones).
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        labels = [str(i) for i in range(len(vectors))] if labels is None else list(labels)
        exclude = [None] * len(vectors) if exclude is None else list(exclude)
        rows = []
        if len(self) and len(vectors):
            distances, indices = self._nearest().kneighbors(vectors, n_neighbors=min(k + 1, len(self)))
            for label, skip, row_distances, row_indices in zip(labels, exclude, distances, indices):
                kept = [(d, i) for d, i in zip(row_distances, row_indices) if self.names[i] != skip][:k]
                rows += [(label, rank, self.names[i], float(d)) for rank, (d, i) in enumerate(kept, start=1)]
        return pd.DataFrame(rows, columns=["query", "rank", self.key, "distance"])

    def similar(self, names: Sequence[str], k: int = 5) -> pd.DataFrame:
        """The ``k`` nearest rows of indexed rows, each excluding itself; see :meth:`search`."""
        names = [str(name) for name in names]
        vectors = np.stack([self.vector(name) for name in names]) if names else np.empty((0, 0))
        return self.search(vectors, k, labels=names, exclude=names)

    def photo_path(self, name: str) -> Path | None:
        """The photo showing ``name`` (resolved against ``image_dir``), None if unknown."""
        photo = self.photos.get(str(name))
        if photo is None:
            return None
        photo = Path(photo)
        return photo if photo.is_absolute() or self.image_dir is None else self.image_dir / photo

    def _nearest(self):
        from sklearn.neighbors import NearestNeighbors

        if self._neighbours is None:
            self._neighbours = NearestNeighbors(metric="cosine", algorithm="brute").fit(self.vectors)
        return self._neighbours


def _first_photo_per_item(image_paths: pd.Series) -> dict[str, str]:
    """Item id -> its lowest-numbered photo (``_1`` before ``_2``)."""
    first: dict[str, str] = {}
    for path in sorted(image_paths, key=image_number):
        first.setdefault(item_id_from_name(path), path)
    return first


def _photos_of_items(image_dir: Path) -> dict[str, str]:
    """Item id -> its first photo among the files of ``image_dir`` and its sub-folders."""
    if not image_dir.is_dir():
        return {}
    files = (path.relative_to(image_dir).as_posix() for path in image_dir.rglob("*") if path.is_file())
    return _first_photo_per_item(pd.Series(list(files), dtype=object))


# -- queries given by users -----------------------------------------------------------


def similar_items(
    index: SimilarityIndex,
    queries: Sequence[str | os.PathLike],
    k: int = 5,
    *,
    weights: str | os.PathLike | None = None,
    embedder=None,
) -> pd.DataFrame:
    """The ``k`` nearest rows of each query: a name in the index or an image file.

    A query that is a name of the index (an ``image_path`` or ``item_id``, or a file
    under the index's ``image_dir`` whose relative path is one) uses its stored vector
    and is left out of its own results. Any other query must be an image file: it is
    embedded by ``embedder``, by default the network recorded in the index's model
    info (:func:`embedder_from_model_info`, with ``weights`` replacing the recorded ones).

    Parameters
    ----------
    index : SimilarityIndex
    queries : sequence of str or os.PathLike
    k : int, default=5
    weights : str, os.PathLike or None
    embedder : fitted CNNImageEmbedder or None

    Returns
    -------
    DataFrame
        ``query`` (as given), ``rank``, the key column, ``distance``; see
        :meth:`SimilarityIndex.search`.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.uses.similarity import SimilarityIndex, similar_items
    >>> index = SimilarityIndex(["7", "8", "9"], np.eye(3)[[0, 0, 1]] + 0.1, key="item_id")
    >>> similar_items(index, ["7"], k=1)
      query  rank item_id  distance
    0     7     1       8       0.0
    """
    labels = [os.fspath(query) for query in queries]
    names = [_indexed_name(index, label) for label in labels]
    files = [label for label, name in zip(labels, names) if name is None]
    for label in files:
        if not os.path.isfile(label):
            raise FileNotFoundError(f"query {label!r} is neither an image file nor a {index.key} of the table")
    embedded = {}
    if files:
        embedder = embedder if embedder is not None else fitted_embedder_from_model_info(index.model_info, weights)
        embedded = dict(zip(files, np.asarray(embedder.transform(files))))
    vectors = [index.vector(name) if name is not None else embedded[label] for label, name in zip(labels, names)]
    matrix = np.stack(vectors) if vectors else np.empty((0, index.vectors.shape[1]), dtype=np.float32)
    return index.search(matrix, k, labels=labels, exclude=names)


def _indexed_name(index: SimilarityIndex, query: str) -> str | None:
    if query in index:
        return query
    if index.image_dir is not None and os.path.isfile(query):
        try:
            relative = Path(query).resolve().relative_to(index.image_dir.resolve()).as_posix()
        except ValueError:
            return None
        if relative in index:
            return relative
    return None  # in an item search, a photo of an item is a new query: the item is not left out
