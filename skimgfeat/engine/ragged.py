"""RaggedPhotos: the photos' feature rows of items with different numbers of photos.

An item with 400 photos beside 2,000 items with one would make a padded
``(n_items, max_photos, n_features)`` array 400 times larger than the photos: 2,001 x
400 x 1280 float32 is 4.1 GB for 12 MB of vectors. :class:`RaggedPhotos` keeps the
photos' rows in one ``(n_photos, n_features)`` array and where each item's rows start
(``offsets``), so memory follows the photos. NumPy sees the padded array only when a
user asks for one (``np.asarray(photos)`` or :meth:`RaggedPhotos.to_padded`).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np


class RaggedPhotos:
    """Feature rows of photos, grouped by item: item ``i`` owns rows ``offsets[i]:offsets[i + 1]``.

    What :class:`~skimgfeat.CNNImageEmbedder` returns for several photos per sample,
    and what :class:`~skimgfeat.ItemAggregator`, :class:`~skimgfeat.VisualComparables`
    and :class:`~skimgfeat.CrossFittedTransformer` take without padding it.

    Parameters
    ----------
    values : ndarray of shape (n_photos, n_features)
        The photos' rows, item after item; a photo that failed to load is a NaN row.
    offsets : array-like of int of shape (n_items + 1,)
        ``0 = offsets[0] <= offsets[1] <= ... <= offsets[-1] = n_photos``; an item
        with no photo has two equal offsets.

    Attributes
    ----------
    shape : tuple
        ``(n_items, max_photos, n_features)``: the shape of the padded array, as
        scikit-learn's helpers (``_num_samples``) read it. Nothing of that size exists.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.engine.ragged import RaggedPhotos
    >>> photos = RaggedPhotos(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), [0, 2, 3])
    >>> len(photos), photos.shape, photos.counts.tolist()
    (2, (2, 2, 2), [2, 1])
    >>> photos[1]
    array([[5., 6.]])
    >>> np.asarray(photos)[1]
    array([[ 5.,  6.],
           [nan, nan]])
    """

    __slots__ = ("values", "offsets")
    ndim = 3

    def __init__(self, values: np.ndarray, offsets: Sequence[int] | np.ndarray) -> None:
        values = np.asarray(values)
        offsets = np.asarray(offsets, dtype=np.intp)
        if values.ndim != 2:
            raise ValueError(f"values must be (n_photos, n_features), got shape {values.shape}")
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values):
            raise ValueError(f"offsets must run from 0 to the {len(values)} photos, got {offsets!r}")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must not decrease")
        self.values = values
        self.offsets = offsets

    # -- what the items are ------------------------------------------------------

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_features(self) -> int:
        return self.values.shape[1]

    @property
    def counts(self) -> np.ndarray:
        """Photo rows per item (failed photos included)."""
        return np.diff(self.offsets)

    @property
    def item_of_row(self) -> np.ndarray:
        """The item of each photo row."""
        return np.repeat(np.arange(self.n_items), self.counts)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_items, int(self.counts.max(initial=0)), self.n_features)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return f"RaggedPhotos(n_items={self.n_items}, n_photos={len(self.values)}, n_features={self.n_features})"

    # -- conversions -------------------------------------------------------------

    def to_padded(self, dtype=None) -> np.ndarray:
        """The NaN-padded ``(n_items, max_photos, n_features)`` array (allocates it)."""
        n_items, width, n_features = self.shape
        padded = np.full((n_items, max(width, 1), n_features), np.nan, dtype=self.dtype if dtype is None else dtype)
        padded[self.item_of_row, np.arange(len(self.values)) - np.repeat(self.offsets[:-1], self.counts)] = self.values
        return padded

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.to_padded(dtype)

    @classmethod
    def from_padded(cls, padded: np.ndarray) -> RaggedPhotos:
        """The rows of a NaN-padded ``(n_items, max_photos, n_features)`` array, all-NaN photos left out."""
        padded = np.asarray(padded)
        if padded.ndim != 3:
            raise ValueError(f"expected a (n_items, max_photos, n_features) array, got shape {padded.shape}")
        present = ~np.isnan(padded).all(axis=2) if padded.dtype.kind == "f" else np.ones(padded.shape[:2], bool)
        offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))])
        return cls(padded[present], offsets)

    @classmethod
    def concatenate(cls, parts: Sequence[RaggedPhotos]) -> RaggedPhotos:
        """The items of ``parts``, one after another."""
        values = np.concatenate([part.values for part in parts])
        starts = np.cumsum([0] + [len(part.values) for part in parts[:-1]])
        offsets = np.concatenate([[0]] + [part.offsets[1:] + start for part, start in zip(parts, starts)])
        return cls(values, offsets)

    def astype(self, dtype, copy: bool = True) -> RaggedPhotos:
        return RaggedPhotos(self.values.astype(dtype, copy=copy), self.offsets)

    # -- selecting items -----------------------------------------------------------

    def __getitem__(self, key):
        """``photos[i]``: item i's ``(n_photos_i, n_features)`` rows; a slice, index array or mask: those items.

        ``photos[i, j]`` and other tuples index the item's rows as NumPy would.
        """
        if isinstance(key, tuple):
            return self[key[0]][key[1:]] if isinstance(key[0], Integral) else np.asarray(self)[key]
        if isinstance(key, Integral):
            item = range(self.n_items)[key]  # negative indices and bounds as a list has them
            return self.values[self.offsets[item] : self.offsets[item + 1]]
        items = np.arange(self.n_items)[key]
        return self.take(items)

    def take(self, items: Sequence[int] | np.ndarray) -> RaggedPhotos:
        """The items at ``items``, in that order (rows copied once, never padded)."""
        items = np.asarray(items, dtype=np.intp)
        counts = self.counts[items]
        starts = self.offsets[:-1][items]
        rows = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        return RaggedPhotos(self.values[rows], np.concatenate([[0], np.cumsum(counts)]))


def is_ragged(X) -> bool:
    return isinstance(X, RaggedPhotos)
