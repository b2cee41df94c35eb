"""Parts of about equal size over unit vectors: where a search for near-copies looks.

Photo features are non-negative, so every row has a large inner product with their mean
direction. The lists of an inverted file (a k-means of the raw rows) therefore gather
whatever has no centre of its own into a few large lists that are near every row: at a
million rows the largest held 27,533 rows against a median of 519, and a query visiting
8 lists met about 95,000 rows, most of them from the same 5 lists.

A :class:`BalancedPartition` is a spherical k-means of the rows *minus their mean*.
Without the common direction the rows of a part are as near as the rows of nearby photos
are, and parts are of about equal size. Moving every row by the same vector keeps their
distances, so a row and its near-copy fall in the same part or a neighbouring one: a range
search for copies visits a query's few nearest parts and meets a few thousand rows.

The partition is kept beside an inverted file (``partition.npz`` in its generation): the
centres, the mean, and the part of every row, extended as rows are added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .unit_vectors import faiss_module, normalise

PARTITION_FILE = "partition.npz"
# Parts a range search visits per query: a near-copy lies in its original's part or one of the next.
RANGE_SEARCH_PARTS = 8
KMEANS_ITERATIONS = 10


class BalancedPartition:
    """Parts of about equal size: the centres of a spherical k-means of unit rows minus their mean.

    Parameters
    ----------
    mean : ndarray of shape (n_features,)
        Subtracted from every row before it is compared with the centres.
    centres : ndarray of shape (n_parts, n_features)
        Unit-length centres.
    part_of_row : ndarray of shape (n_rows,) or None
        The part of each row added so far (its nearest centre).

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.abs(np.random.default_rng(0).normal(size=(400, 8)))
    >>> partition = BalancedPartition.trained(rows, n_parts=4)
    >>> partition.add(rows)
    >>> partition.nearest(rows[:2], 2).shape
    (2, 2)
    >>> int(np.bincount(partition.part_of_row).min()) > 40  # no part is left nearly empty
    True
    """

    def __init__(self, mean: np.ndarray, centres: np.ndarray, part_of_row: np.ndarray | None = None) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.centres = np.ascontiguousarray(centres, dtype=np.float32)
        self._parts = [np.asarray(part_of_row, dtype=np.int32)] if part_of_row is not None else []

    @classmethod
    def trained(cls, sample, n_parts: int, *, seed: int = 0) -> BalancedPartition:
        """Train ``n_parts`` centres (at most one per sample row) on ``sample`` (rows made unit length)."""
        faiss = faiss_module()
        sample = normalise(sample)
        n_parts = max(1, min(int(n_parts), len(sample)))
        mean = sample.mean(axis=0)
        kmeans = faiss.Kmeans(sample.shape[1], n_parts, niter=KMEANS_ITERATIONS, spherical=True, seed=seed + 1,
                              min_points_per_centroid=1,
                              max_points_per_centroid=max(256, -(-len(sample) // n_parts)))
        kmeans.train(normalise(sample - mean))
        return cls(mean, kmeans.centroids)

    @property
    def n_parts(self) -> int:
        return len(self.centres)

    @property
    def part_of_row(self) -> np.ndarray:
        """The part of each row added, in row order (int32)."""
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts else np.empty(0, dtype=np.int32)]
        return self._parts[0]

    def __len__(self) -> int:
        return sum(len(block) for block in self._parts)

    def nearest(self, vectors, n: int) -> np.ndarray:
        """The ``n`` nearest parts of each vector, nearest first: an ``(n_vectors, n)`` int64 array."""
        n = max(1, min(int(n), self.n_parts))
        scores = normalise(normalise(vectors) - self.mean) @ self.centres.T
        if n == 1:
            return scores.argmax(axis=1)[:, None].astype(np.int64)
        nearest = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(scores, nearest, axis=1), axis=1, kind="stable")
        return np.take_along_axis(nearest, order, axis=1).astype(np.int64)

    def add(self, vectors) -> None:
        """Give the next rows (in order) their part: the nearest centre."""
        parts = [self.nearest(vectors[start:start + 16384], 1)[:, 0] for start in range(0, len(vectors), 16384)]
        self._parts.append(np.concatenate(parts).astype(np.int32) if parts else np.empty(0, np.int32))

    def taken(self, rows) -> BalancedPartition:
        """The same parts for the given rows only, in that order (what a compaction keeps)."""
        return BalancedPartition(self.mean, self.centres, self.part_of_row[np.asarray(rows, dtype=np.int64)])

    def write(self, folder: Path) -> None:
        with open(Path(folder) / PARTITION_FILE, "wb") as handle:
            np.savez(handle, mean=self.mean, centres=self.centres, part_of_row=self.part_of_row)

    @classmethod
    def read(cls, folder: Path) -> BalancedPartition | None:
        """The partition written in ``folder``; None where there is none (an index written before)."""
        path = Path(folder) / PARTITION_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            return cls(stored["mean"], stored["centres"], stored["part_of_row"])
