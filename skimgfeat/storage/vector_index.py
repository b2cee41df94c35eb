"""Unit-length float32 vectors searched by inner product (cosine), exact or with FAISS; index folders on disk.

:class:`VectorIndex` holds L2-normalised vectors and answers k-nearest, range and
all-pairs queries in cosine distance (``1 - inner product``). Up to
:data:`EXACT_MAX_ROWS` rows the search is exact (NumPy blocks, no FAISS needed); beyond
it an inverted-file index of 8-bit scalar-quantised vectors (FAISS
``IndexIVFScalarQuantizer``, a quarter of the memory) is chosen unless the kind is
given. Every query runs in blocks whose memory does not grow with the square of the
number of rows.

An *index directory* keeps generations side by side::

    INDEX_DIR/CURRENT             names the live generation ("gen-000002")
    INDEX_DIR/gen-000002/index.json    kind, parameters, model info, row count, file sizes
    INDEX_DIR/gen-000002/vectors.npy   (exact) or vectors.faiss (inverted file)
    INDEX_DIR/gen-000002/partition.npz with an inverted file: its balanced parts (range searches)
    INDEX_DIR/gen-000002/rows.parquet  the identity of each row (image_path, image_name, item_id)

A new generation is written beside the live one, flushed, renamed into place and only
then named by an atomic rewrite of ``CURRENT``: whatever interrupts a writer, readers
see the previous generation whole.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..exceptions import IndexDirectoryError
from .balanced_partition import PARTITION_FILE, RANGE_SEARCH_PARTS, BalancedPartition
from .generation_lock import READERS_FILE, WriterLock, hold_generation, holds_writer_lock, release, retire
from .io import _fsync, _fsync_folder, atomic_path
from .kill_points import kill_point
from .unit_vectors import faiss_module, normalise

KINDS = ("auto", "flat", "ivf", "ivf-sq8", "ivf-pq")
EXACT_MAX_ROWS = 50_000
FORMAT = "skimgfeat-index"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
INFO_FILE = "index.json"
ROWS_FILE = "rows.parquet"
_GENERATION = re.compile(r"^gen-(\d{6,})$")
# What an archive keeps beside the generations (skimgfeat.archive): the folder is still an index.
_ARCHIVE_ENTRIES = frozenset({"LOCK", "ARCHIVE.json", "photos", "local_features", "instance_index",
                              "image_hashes.parquet", "reports", "features", "pending"})
# Parts each row visits when all pairs are sought: a near-duplicate lies in its original's part or a next one.
PAIR_NPROBE = 2
# Scores of one query block against all rows are held at once: at most this many floats (64 MB).
_BLOCK_FLOATS = 2**24
# From this many queries, a range search over an inverted file compares list by list (one matrix product per
# list visited) instead of query by query.
BY_LIST_QUERIES = 64


def choose_kind(n_rows: int, kind: str = "auto") -> str:
    """The index kind for ``n_rows`` rows: ``kind`` itself unless it is ``"auto"``.

    >>> choose_kind(10_000), choose_kind(2_000_000), choose_kind(10, "ivf")
    ('flat', 'ivf-sq8', 'ivf')
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if n_rows <= EXACT_MAX_ROWS else "ivf-sq8"


def default_nlist(n_rows: int) -> int:
    """Inverted lists for ``n_rows`` rows: about the square root, at least 16 (1,000 at a million)."""
    return max(16, int(round(math.sqrt(max(n_rows, 1)))))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: a 32nd of them, at least 8 (31 of 1,000)."""
    return min(nlist, max(8, nlist // 32))


def training_rows(nlist: int) -> int:
    """Rows to train the coarse quantizer on: 64 per list, at least 20,000."""
    return max(20_000, 64 * nlist)


def pair_partition(index: VectorIndex, n_parts: int, nprobe: int, *, seed: int = 0) -> np.ndarray:
    """For each row of an inverted-file ``index``, its ``nprobe`` nearest of ``n_parts`` parts, nearest first.

    The parts are a :class:`~skimgfeat.storage.balanced_partition.BalancedPartition`
    (parts of about equal size: comparing rows part by part grows with the square of a
    part): the index's own when it has one of ``n_parts``, else one trained on a sample
    of :func:`training_rows` rows. A row and its near-duplicate stay in the same or a
    neighbouring part. Returns an ``(n_rows, min(nprobe, n_parts))`` int64 array; with
    ``nprobe >= n_parts`` each row visits every part.
    """
    n_rows = len(index)
    n_parts = max(1, min(int(n_parts), n_rows))
    partition = index.partition
    if partition is None or partition.n_parts != n_parts:
        partition = _trained_partition(index, n_parts, seed)
    nprobe = max(1, min(int(nprobe), partition.n_parts))
    nearest = np.empty((n_rows, nprobe), dtype=np.int64)
    for start, stop in _blocks(n_rows, 16384):
        nearest[start:stop] = partition.nearest(index.reconstruct(start, stop), nprobe)
    return nearest


def _trained_partition(index: VectorIndex, n_parts: int, seed: int = 0) -> BalancedPartition:
    """A balanced partition of ``n_parts`` trained on a sample of the index's own rows."""
    n_rows = len(index)
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(n_rows, min(n_rows, training_rows(n_parts)), replace=False))
    sample = np.concatenate([index.reconstruct_rows(sample_rows[start:stop])
                             for start, stop in _blocks(len(sample_rows), 16384)])
    return BalancedPartition.trained(sample, n_parts, seed=seed)


class VectorIndex:
    """Unit-length float32 vectors, searched by cosine distance.

    Parameters
    ----------
    n_features : int
    kind : {"flat", "ivf", "ivf-sq8", "ivf-pq"}, default="flat"
        ``"flat"``: exact (NumPy). ``"ivf"``: FAISS inverted file over full vectors;
        ``"ivf-sq8"``: over 8-bit scalar-quantised vectors (4x smaller);
        ``"ivf-pq"``: over product-quantised ones (``pq_m`` bytes a row).
    nlist : int or None
        Inverted lists (inverted-file kinds); None: :func:`default_nlist` of the rows
        the index is trained for.
    nprobe : int or None
        Lists visited per query; None: :func:`default_nprobe`.
    pq_m : int or None
        Sub-quantizers of ``"ivf-pq"``; None: the largest of 64, 32, 16, 8... dividing
        ``n_features``.

    Examples
    --------
    >>> import numpy as np
    >>> index = VectorIndex(2)
    >>> index.add(np.array([[1.0, 0.0], [0.0, 3.0]]))
    >>> distances, rows = index.search(np.array([[2.0, 0.1]]), k=1)
    >>> rows.tolist(), round(float(distances[0, 0]), 4)
    ([[0]], 0.0012)
    """

    def __init__(
        self,
        n_features: int,
        kind: str = "flat",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int | None = None,
    ) -> None:
        if kind not in KINDS[1:]:
            raise ValueError(f"kind must be one of {KINDS[1:]}, got {kind!r}")
        self.n_features = int(n_features)
        self.kind = kind
        self.nlist = nlist
        self.nprobe = nprobe
        self.pq_m = pq_m
        self._blocks: list[np.ndarray] = []  # flat: added vectors, joined on first use
        self._faiss = None  # inverted-file kinds: the FAISS index once trained
        self.mapped = False  # read-only, memory-mapped from an index directory
        self.source: Path | None = None  # the file it was read from
        # Inverted-file kinds: parts of about equal size where range searches (copies) look.
        self.partition: BalancedPartition | None = None

    # -- building ---------------------------------------------------------------------

    @property
    def is_trained(self) -> bool:
        return self.kind == "flat" or self._faiss is not None

    def train(self, sample, n_rows: int | None = None) -> VectorIndex:
        """Train the coarse quantizer (and the codes) of an inverted-file kind on ``sample``.

        ``n_rows`` (default: the sample's length) is the size the index is expected to
        reach; it sets the default ``nlist``. A flat index needs no training.
        """
        if self.kind == "flat":
            return self
        faiss = faiss_module()
        sample = normalise(sample)
        self.nlist = int(self.nlist or default_nlist(n_rows or len(sample)))
        self.nlist = min(self.nlist, len(sample))  # k-means needs a point per centroid
        self.nprobe = int(min(self.nprobe or default_nprobe(self.nlist), self.nlist))
        quantizer = faiss.IndexFlatIP(self.n_features)
        metric = faiss.METRIC_INNER_PRODUCT
        if self.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, self.n_features, self.nlist, metric)
        elif self.kind == "ivf-sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.n_features, self.nlist,
                                                  faiss.ScalarQuantizer.QT_8bit, metric)
        else:
            self.pq_m = int(self.pq_m or _pq_subquantizers(self.n_features))
            if self.n_features % self.pq_m:
                raise ValueError(f"pq_m={self.pq_m} does not divide the {self.n_features} features")
            index = faiss.IndexIVFPQ(quantizer, self.n_features, self.nlist, self.pq_m, 8, metric)
            index.pq.cp.min_points_per_centroid = 1  # FAISS would warn once per sub-quantizer on small samples
        index.cp.niter = 10  # enough for well-separated photo clusters; training time is linear in it
        index.cp.max_points_per_centroid = max(256, -(-len(sample) // self.nlist))
        index.train(sample)
        index.nprobe = self.nprobe
        index.make_direct_map()  # rows can be read back (reconstruct) for queries by name
        self._faiss = index
        self.partition = BalancedPartition.trained(sample, self.nlist)
        return self

    def add_partition(self) -> bool:
        """Give an inverted file written before partitions were kept its :attr:`partition` (every row read
        once: about 70 s at a million rows); False where it has one already or needs none."""
        if self.kind == "flat" or self._faiss is None or self.partition is not None:
            return False
        partition = _trained_partition(self, self.nlist or default_nlist(len(self)))
        for start, stop in _blocks(len(self), 16384):
            partition.add(self.reconstruct(start, stop))
        self.partition = partition
        return True

    def add(self, vectors) -> None:
        """Append rows (normalised here); they get the next row numbers."""
        vectors = normalise(vectors)
        if vectors.shape[1] != self.n_features:
            raise ValueError(f"vectors have {vectors.shape[1]} features, the index {self.n_features}")
        if np.isnan(vectors).any():
            raise ValueError("vectors with NaN cannot be indexed (leave failed photos out)")
        if not len(vectors):
            return
        self.mapped = False  # changed: written anew, not linked to the file it was read from
        if self.kind == "flat":
            self._blocks.append(vectors)
            return
        if self._faiss is None:
            raise ValueError(f"a {self.kind!r} index must be trained before rows are added")
        self._faiss.add(vectors)
        if self.partition is not None:
            self.partition.add(vectors)

    def __len__(self) -> int:
        if self.kind == "flat":
            return sum(len(block) for block in self._blocks)
        return 0 if self._faiss is None else int(self._faiss.ntotal)

    @property
    def vectors(self) -> np.ndarray:
        """All rows (flat: as stored; inverted-file kinds: decoded, approximate for sq8 and pq)."""
        return self.reconstruct(0, len(self))

    def reconstruct(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop - 1`` as float32 vectors."""
        if self.kind == "flat":
            return self._flat()[start:stop]
        if stop <= start:
            return np.empty((0, self.n_features), dtype=np.float32)
        return self._faiss.reconstruct_n(start, stop - start)

    def reconstruct_rows(self, rows) -> np.ndarray:
        """The vectors of the given row numbers."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind == "flat":
            return self._flat()[rows]
        if not len(rows):
            return np.empty((0, self.n_features), dtype=np.float32)
        return self._faiss.reconstruct_batch(rows)

    # -- queries ----------------------------------------------------------------------

    def search(
        self, queries, k: int, *, nprobe: int | None = None, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of each query: cosine distances and row numbers, nearest first.

        Returns arrays of shape (n_queries, k); where fewer than ``k`` rows are found
        the row is -1 and the distance ``inf``. ``nprobe`` is this search's alone (FAISS
        search parameters): searches in other threads keep theirs. ``exclude``: a boolean
        mask over the rows (True: never returned), e.g. removed photos.
        """
        queries = normalise(queries)
        n_queries = len(queries)
        distances = np.full((n_queries, k), np.inf, dtype=np.float32)
        rows = np.full((n_queries, k), -1, dtype=np.int64)
        if not len(self) or not n_queries:
            return distances, rows
        if self.kind != "flat":
            scores, found = self._faiss.search(queries, k, params=self._search_parameters(nprobe, exclude))
            valid = found >= 0
            distances[valid] = _distance(scores[valid])
            rows[valid] = found[valid]
            return distances, rows
        vectors = self._flat()
        kept = min(k, len(vectors))
        for start, stop in _blocks(n_queries, max(1, _BLOCK_FLOATS // len(vectors))):
            scores = queries[start:stop] @ vectors.T
            if exclude is not None:
                scores[:, _padded(exclude, len(vectors))] = -np.inf
            top = np.argpartition(-scores, kept - 1, axis=1)[:, :kept] if kept < len(vectors) else \
                np.broadcast_to(np.arange(len(vectors)), scores.shape)
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            rows[start:stop, :kept] = np.take_along_axis(top, order, axis=1)
            distances[start:stop, :kept] = _distance(np.take_along_axis(top_scores, order, axis=1))
        if exclude is not None:
            gone = np.isinf(distances) | (rows >= 0) & _padded(exclude, len(vectors))[np.maximum(rows, 0)]
            rows[gone], distances[gone] = -1, np.inf
            order = np.argsort(gone, axis=1, kind="stable")  # the rows left first, nearest first
            rows, distances = np.take_along_axis(rows, order, axis=1), np.take_along_axis(distances, order, axis=1)
        return distances, rows

    def range_search(
        self, queries, max_distance: float, *, nprobe: int | None = None, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row within ``max_distance`` (cosine) of each query, FAISS style.

        Returns ``(lims, distances, rows)``: the results of query ``i`` are
        ``distances[lims[i]:lims[i+1]]`` and ``rows[lims[i]:lims[i+1]]``, nearest first.
        ``exclude``: as for :meth:`search`. ``nprobe``: on an inverted file with a
        :attr:`partition`, the balanced parts visited per query (default
        :data:`~skimgfeat.storage.balanced_partition.RANGE_SEARCH_PARTS`); on one written
        before partitions were kept, the inverted lists visited (default :attr:`nprobe`).
        """
        queries = normalise(queries)
        limits, distance_parts, row_parts = [np.zeros(1, dtype=np.int64)], [], []
        total = 0
        if self.kind == "flat":
            vectors = self._flat()
            for start, stop in _blocks(len(queries), max(1, _BLOCK_FLOATS // max(len(vectors), 1))):
                scores = queries[start:stop] @ vectors.T
                if exclude is not None:
                    scores[:, _padded(exclude, len(vectors))] = -np.inf
                query, row = np.nonzero(scores >= 1.0 - max_distance)
                distance = _distance(scores[query, row])
                order = np.lexsort((distance, query))
                counts = np.bincount(query, minlength=stop - start)
                limits.append(total + np.cumsum(counts))
                total += len(order)
                distance_parts.append(distance[order])
                row_parts.append(row[order].astype(np.int64))
        elif self.partition is not None:
            return self._range_search_by_part(queries, max_distance, nprobe, exclude)
        elif len(queries) >= BY_LIST_QUERIES:
            return self._range_search_by_list(queries, max_distance, nprobe, exclude)
        else:
            parameters = self._search_parameters(nprobe, exclude)
            for start, stop in _blocks(len(queries), 4096):
                lims, scores, found = self._faiss.range_search(queries[start:stop], 1.0 - max_distance,
                                                               params=parameters)
                lims = lims.astype(np.int64)
                query = np.repeat(np.arange(stop - start), np.diff(lims))
                distance = _distance(scores)
                order = np.lexsort((distance, query))
                limits.append(total + lims[1:])
                total += len(order)
                distance_parts.append(distance[order])
                row_parts.append(found[order].astype(np.int64))
        return (np.concatenate(limits), _join(distance_parts, np.float32), _join(row_parts, np.int64))

    def _range_search_by_part(self, queries: np.ndarray, max_distance: float, nprobe: int | None,
                              exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`range_search` of (normalised) queries over the balanced :attr:`partition`: each query is compared
        with the rows of its ``nprobe`` (default :data:`RANGE_SEARCH_PARTS`) nearest parts.

        The rows are read from the inverted file list by list, each list once and only
        the rows of parts some query visits; within a list, the rows of each part are
        compared with all the queries visiting that part in one matrix product. Parts are
        of about equal size, so a query meets a few thousand rows at a million, where the
        inverted file's own lists made it meet about 95,000.
        """
        faiss = faiss_module()
        ivf = faiss.downcast_index(faiss.extract_index_ivf(self._faiss))
        partition = self.partition
        parts = partition.nearest(queries, nprobe or RANGE_SEARCH_PARTS)
        visits = parts.ravel()
        order = np.argsort(visits, kind="stable")
        visits, asked = visits[order], np.repeat(np.arange(len(queries)), parts.shape[1])[order]
        visitor_bounds = np.searchsorted(visits, np.arange(partition.n_parts + 1))
        part_of_row = partition.part_of_row
        visited = np.zeros(partition.n_parts, dtype=bool)
        visited[visits] = True
        wanted = visited[part_of_row]
        if exclude is not None and exclude.any():
            wanted &= ~_padded(exclude, len(self))
        # The list of each row from FAISS's direct map (list number in the high 32 bits).
        list_of_row = faiss.vector_to_array(ivf.direct_map.array) >> 32
        found = _RangeMatches(queries, np.float32(1.0 - max_distance))
        # One BLAS thread: the products are small (a part's rows against its visitors), and threads that
        # wait for each other spin on a busy machine (10,000 queries at a million rows, two other processes
        # busy: 17-22 s with two threads, 5-9 s with one).
        with threadpool_limits(1, user_api="blas"):
            for list_number in np.unique(list_of_row[wanted]):
                ids, matrix, scale, offset = _list_for_scores(ivf, int(list_number), ivf.invlists.list_size(
                    int(list_number)), keep=lambda ids: wanted[ids])
                row_parts = part_of_row[ids]
                by_part = np.argsort(row_parts, kind="stable")
                starts = np.flatnonzero(np.r_[True, row_parts[by_part][1:] != row_parts[by_part][:-1]])
                for start, stop in zip(starts, np.r_[starts[1:], len(by_part)]):
                    rows = by_part[start:stop]
                    part = row_parts[rows[0]]
                    found.add(asked[visitor_bounds[part]:visitor_bounds[part + 1]], ids[rows], matrix[rows], scale,
                              offset)
        return found.results()

    def _range_search_by_list(self, queries: np.ndarray, max_distance: float, nprobe: int | None,
                              exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`range_search` of many (normalised) queries, list by list: the same lists visited, the same
        rows found (up to float rounding at the threshold), in far less time.

        FAISS scans each query's lists on its own, decoding every 8-bit code for every query.
        On photo features the lists are uneven: a few lists gather whatever has no centre of
        its own, and nearly every query visits them (at a million rows, 8 lists visited meant
        about 95,000 rows a query, 80,000 of them from 5 lists). Here each visited list is
        decoded once and compared with all the queries that visit it in one matrix product.
        """
        faiss = faiss_module()
        ivf = faiss.downcast_index(faiss.extract_index_ivf(self._faiss))  # its own class: its codes are decoded
        nprobe = int(nprobe or self.nprobe or ivf.nprobe)
        _, lists = ivf.quantizer.search(queries, nprobe)
        visits = lists.ravel()
        asked = np.repeat(np.arange(len(queries)), lists.shape[1])[visits >= 0]
        visits = visits[visits >= 0]
        order = np.argsort(visits, kind="stable")
        visits, asked = visits[order], asked[order]
        starts = np.flatnonzero(np.r_[True, visits[1:] != visits[:-1]])
        excluded = None if exclude is None or not exclude.any() else _padded(exclude, len(self))
        found = _RangeMatches(queries, np.float32(1.0 - max_distance))
        for start, stop in zip(starts, np.r_[starts[1:], len(visits)]):
            list_number = int(visits[start])
            size = ivf.invlists.list_size(list_number)
            if not size:
                continue
            ids, matrix, scale, offset = _list_for_scores(
                ivf, list_number, size, keep=None if excluded is None else lambda ids: ~excluded[ids])
            if len(ids):
                found.add(asked[start:stop], ids, matrix, scale, offset)
        return found.results()

    def neighbour_pairs(
        self, max_distance: float, *, nprobe: int | None = None, block_rows: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of distinct rows within ``max_distance``, once each (``row_a < row_b``).

        Memory is one block's scores plus the pairs found, never rows x rows. The exact
        kind compares every row with every other, a block of rows at a time. The
        inverted-file kinds split the rows into ``nlist`` parts of about equal size
        (:func:`pair_partition`) and compare, part by part, the rows of the part with
        each other and with the rows that have the part among their ``nprobe`` nearest
        (default :data:`PAIR_NPROBE`): a pair is found when either row's part is among
        the other's nearest parts. With ``nprobe=nlist`` the result is that of exact
        search over the stored (for sq8 and pq, decoded) vectors.
        """
        first, second, distance = (
            self._flat_pairs(max_distance, block_rows) if self.kind == "flat" else
            self._partition_pairs(max_distance, int(nprobe or PAIR_NPROBE), block_rows or 4096)
        )
        # A pair may be found from both ends: keep one.
        order = np.lexsort((distance, second, first))
        first, second, distance = first[order], second[order], distance[order]
        unique = np.ones(len(first), dtype=bool)
        unique[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
        return first[unique], second[unique], distance[unique]

    def _flat_pairs(self, max_distance: float, block_rows: int | None):
        vectors = self._flat()
        block_rows = block_rows or max(1, min(4096, _BLOCK_FLOATS // max(len(vectors), 1)))
        found = _Pairs()
        for start, stop in _blocks(len(vectors), block_rows):
            # Only rows from ``start`` on: each pair is scored once, from its first row.
            found.add(vectors[start:stop] @ vectors[start:].T, max_distance, np.arange(start, stop),
                      np.arange(start, len(vectors)))
        return found.arrays()

    def _partition_pairs(self, max_distance: float, nprobe: int, block_rows: int):
        n_rows = len(self)
        found = _Pairs()
        if n_rows < 2:
            return found.arrays()
        n_parts = min(self.nlist, n_rows)
        nearest = pair_partition(self, n_parts, nprobe)  # the nprobe parts nearest to each row, its own first
        members = _group_rows(nearest[:, 0], n_parts)
        guests = _group_rows(nearest[:, 1:].ravel(), n_parts, np.repeat(np.arange(n_rows), nearest.shape[1] - 1))
        for number in range(n_parts):
            rows = members[number]
            if not len(rows):
                continue
            visitors = np.concatenate([rows, guests[number]])
            visitor_vectors = self._faiss.reconstruct_batch(visitors)
            for start, stop in _blocks(len(rows), max(1, min(block_rows, _BLOCK_FLOATS // len(visitors)))):
                # Members from ``start`` on, then every guest (a view, no copy): member pairs are scored once.
                found.add(visitor_vectors[start:stop] @ visitor_vectors[start:].T, max_distance,
                          rows[start:stop], visitors[start:])
        return found.arrays()

    # -- persistence ------------------------------------------------------------------

    def parameters(self) -> dict:
        """Kind and parameters, as recorded in ``index.json``."""
        parameters = {"kind": self.kind, "n_features": self.n_features, "n_rows": len(self), "metric": "cosine"}
        if self.kind != "flat":
            parameters.update(nlist=self.nlist, nprobe=self.nprobe)
        if self.kind == "ivf-pq":
            parameters["pq_m"] = self.pq_m
        return parameters

    @property
    def vectors_file(self) -> str:
        return "vectors.npy" if self.kind == "flat" else "vectors.faiss"

    def write(self, folder: Path) -> None:
        """Write the vectors into ``folder`` (block by block for the exact kind)."""
        path = folder / self.vectors_file
        if self.partition is not None:
            self.partition.write(folder)
        if self.mapped and self.source is not None:
            # Unchanged since read from a generation: files of a generation are never
            # changed in place, so the new one may share it (a hard link, instant).
            try:
                os.link(self.source, path)
                return
            except OSError:
                pass  # another file system, or no hard links: write it
        if self.kind == "flat":
            stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                               shape=(len(self), self.n_features))
            position = 0
            for block in self._blocks:
                stored[position:position + len(block)] = block
                position += len(block)
            stored.flush()
            del stored
        else:
            faiss_module().write_index(self._faiss, os.fspath(path))

    @classmethod
    def read(cls, folder: Path, parameters: dict, *, writable: bool = False) -> VectorIndex:
        """The index written by :meth:`write`; memory-mapped unless ``writable``."""
        index = cls(parameters["n_features"], parameters["kind"], nlist=parameters.get("nlist"),
                    nprobe=parameters.get("nprobe"), pq_m=parameters.get("pq_m"))
        path = folder / index.vectors_file
        if index.kind == "flat":
            vectors = np.load(path, mmap_mode=None if writable else "r", allow_pickle=False)
            if vectors.shape != (parameters["n_rows"], index.n_features) or vectors.dtype != np.float32:
                raise ValueError(f"holds {vectors.shape} {vectors.dtype} vectors, index.json says "
                                 f"({parameters['n_rows']}, {index.n_features}) float32")
            index._blocks = [vectors]
            index.mapped = not writable
            index.source = path
            return index
        faiss = faiss_module()
        index._faiss = faiss.read_index(os.fspath(path), 0 if writable else faiss.IO_FLAG_MMAP)
        index.mapped = not writable
        index.source = path
        if index._faiss.ntotal != parameters["n_rows"] or index._faiss.d != index.n_features:
            raise ValueError(f"holds {index._faiss.ntotal} rows of {index._faiss.d} features, index.json says "
                             f"{parameters['n_rows']} of {index.n_features}")
        index.partition = BalancedPartition.read(folder)
        if index.partition is not None and len(index.partition) != parameters["n_rows"]:
            raise ValueError(f"its {PARTITION_FILE} holds {len(index.partition)} rows, index.json says "
                             f"{parameters['n_rows']}")
        return index

    # -- internals --------------------------------------------------------------------

    def _flat(self) -> np.ndarray:
        if len(self._blocks) != 1:
            joined = np.concatenate(self._blocks) if self._blocks else np.empty((0, self.n_features), np.float32)
            self._blocks = [joined]
        return self._blocks[0]

    def _search_parameters(self, nprobe: int | None, exclude: np.ndarray | None):
        """FAISS parameters of one search: its ``nprobe`` and the rows it must not return.

        Passed with the call, never set on the shared FAISS index, so that searches in
        other threads keep their own. The selector's bitmap is kept alive on the object.
        """
        faiss = faiss_module()
        nprobe = int(nprobe or self.nprobe or self._faiss.nprobe)
        if exclude is None or not exclude.any():
            return faiss.SearchParametersIVF(nprobe=nprobe)
        keep = ~_padded(exclude, len(self))
        bitmap = np.packbits(keep, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bitmap))
        parameters = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        parameters._keep_alive = (bitmap, selector)
        return parameters


class _Pairs:
    """Pairs of rows collected block by block from score matrices."""

    def __init__(self) -> None:
        self.first, self.second, self.distance = [], [], []

    def add(self, scores: np.ndarray, max_distance: float, rows: np.ndarray, columns: np.ndarray) -> None:
        row, column = np.nonzero(scores >= 1.0 - max_distance)
        a, b = rows[row], columns[column]
        other = a != b
        self.first.append(np.minimum(a, b)[other])
        self.second.append(np.maximum(a, b)[other])
        self.distance.append(_distance(scores[row, column][other]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _join(self.first, np.int64), _join(self.second, np.int64), _join(self.distance, np.float32)


def _group_rows(labels: np.ndarray, n_groups: int, values: np.ndarray | None = None) -> list[np.ndarray]:
    """For each group 0..n_groups-1, the values (default: positions) whose label it is; -1 labels dropped."""
    values = np.arange(len(labels)) if values is None else values
    kept = labels >= 0
    labels, values = labels[kept], values[kept]
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_groups + 1))
    return [values[order[bounds[i]:bounds[i + 1]]] for i in range(n_groups)]


def _padded(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` cut or extended with False to ``n`` rows (rows added after it was made are kept)."""
    if len(mask) >= n:
        return mask[:n]
    return np.concatenate([mask, np.zeros(n - len(mask), dtype=bool)])


def _list_for_scores(ivf, list_number: int, size: int, keep: Callable[[np.ndarray], np.ndarray] | None = None) -> \
        tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One inverted list read in bulk for scoring: ``(ids, matrix, scale, offset)`` such that the inner products
    of queries ``Q`` with the list's decoded vectors are ``(Q * scale) @ matrix.T + Q @ offset`` (``scale`` and
    ``offset`` None: ``Q @ matrix.T``).

    An 8-bit scalar-quantised list is never decoded: its codes are the matrix, and the
    per-dimension range and the list's centre go into ``scale`` and ``offset`` (decoding a
    million rows through FAISS took 9 to 14 CPU s, more than the products themselves).
    """
    faiss = faiss_module()
    invlists = ivf.invlists
    pointer = invlists.get_ids(list_number)
    ids = faiss.rev_swig_ptr(pointer, size).astype(np.int64)  # copies: the pointers are released at once
    invlists.release_ids(list_number, pointer)
    pointer = invlists.get_codes(list_number)
    codes = faiss.rev_swig_ptr(pointer, size * invlists.code_size).copy().reshape(size, -1)
    invlists.release_codes(list_number, pointer)
    if keep is not None:  # only the rows asked for are converted
        kept = keep(ids)
        ids, codes = ids[kept], codes[kept]
    centre = ivf.quantizer.reconstruct(list_number) if getattr(ivf, "by_residual", False) else None
    if isinstance(ivf, faiss.IndexIVFFlat):
        return ids, codes.view(np.float32), None, None
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer) and ivf.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
        # FAISS decodes component i of code c as vmin_i + (c + 0.5) / 255 * vdiff_i.
        trained = faiss.vector_to_array(ivf.sq.trained)
        vmin, step = trained[:ivf.d], trained[ivf.d:] / 255.0
        offset = vmin + 0.5 * step + (0.0 if centre is None else centre)
        return ids, codes.astype(np.float32), step.astype(np.float32), offset.astype(np.float32)
    return ids, ivf.reconstruct_batch(ids), None, None


class _RangeMatches:
    """The matches of a range search, collected block by block from products of queries with rows."""

    def __init__(self, queries: np.ndarray, threshold: np.float32) -> None:
        self.queries, self.threshold = queries, threshold
        self.query, self.row, self.score = [], [], []

    def add(self, members: np.ndarray, ids: np.ndarray, matrix: np.ndarray, scale: np.ndarray | None,
            offset: np.ndarray | None) -> None:
        """Score queries ``members`` against rows ``ids`` (stored as ``matrix``, see :func:`_list_for_scores`)."""
        for begin, end in _blocks(len(members), max(1, _BLOCK_FLOATS // len(ids))):
            block = self.queries[members[begin:end]]
            scores = (block if scale is None else block * scale) @ matrix.T
            if offset is not None:
                scores += (block @ offset)[:, None]
            query, row = np.nonzero(scores >= self.threshold)
            self.query.append(members[begin:end][query])
            self.row.append(ids[row])
            self.score.append(scores[query, row])

    def results(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lims, distances, rows)`` as :meth:`VectorIndex.range_search` returns them, each query's nearest first."""
        query, rows = _join(self.query, np.int64), _join(self.row, np.int64)
        distances = _distance(_join(self.score, np.float32))
        order = np.lexsort((distances, query))
        limits = np.r_[0, np.cumsum(np.bincount(query, minlength=len(self.queries)))].astype(np.int64)
        return limits, distances[order], rows[order]


def _distance(scores: np.ndarray) -> np.ndarray:
    """Cosine distance from inner products of unit vectors, clipped to [0, 2] (quantised codes overshoot)."""
    return np.clip(1.0 - scores, 0.0, 2.0).astype(np.float32)


def _blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _join(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)


def _pq_subquantizers(n_features: int) -> int:
    return next(m for m in (64, 32, 16, 8, 4, 2, 1) if n_features % m == 0)


# -- index directories ----------------------------------------------------------------


def write_generation(directory: str | os.PathLike, write_files: Callable[[Path], dict], *,
                     keep: Collection[int] = (), kill_prefix: str = "") -> Path:
    """Write a new generation of the index in ``directory`` and make it the live one.

    ``write_files(folder)`` writes the generation's files into an empty folder and
    returns the ``index.json`` content (without the format keys and file sizes, added
    here). The folder is flushed and renamed into place, then ``CURRENT`` is replaced
    atomically. Older generations but the previous one are removed afterwards, except
    those a reader still holds (:func:`open_generation`) and the numbers in ``keep``
    (generations another folder's generations name: an archive's instance index);
    leftovers of writers that were killed are removed too. ``kill_prefix`` starts the
    names of its kill points (a writer of two folders tells them apart).

    The writer lock of ``directory`` (:class:`~skimgfeat.storage.generation_lock.WriterLock`)
    is taken here unless this process holds it already: a writer that reads the live
    generation before writing the next holds it from the read on.

    Returns
    -------
    Path
        The new generation's folder.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise IndexDirectoryError(directory, "is a file, not a folder")
    if not holds_writer_lock(directory):
        with WriterLock(directory):
            return write_generation(directory, write_files, keep=keep, kill_prefix=kill_prefix)
    if not (directory / CURRENT).is_file() and any(
        not entry.name.startswith(".") and entry.name not in _ARCHIVE_ENTRIES and not _GENERATION.match(entry.name)
        for entry in directory.iterdir()
    ):
        raise IndexDirectoryError(directory, "is a non-empty folder that is not a skimgfeat index; "
                                             "choose a new or empty folder")
    _remove_leftovers(directory)
    generations = _generations(directory)
    number = max(generations, default=0) + 1
    name = f"gen-{number:06d}"
    staging = directory / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        info = write_files(staging)
        (staging / READERS_FILE).touch()
        sizes = {entry.name: entry.stat().st_size for entry in sorted(staging.iterdir())
                 if entry.name != READERS_FILE}
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": number,
                "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **info, "files": sizes}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        for entry in staging.iterdir():
            _fsync(entry)
        _fsync_folder(staging)
        kill_point(f"{kill_prefix}generation-staged")
        os.rename(staging, directory / name)
        _fsync_folder(directory)
        kill_point(f"{kill_prefix}generation-renamed")
        with atomic_path(directory / CURRENT) as temporary:
            temporary.write_text(name + "\n", encoding="utf-8")
        kill_point(f"{kill_prefix}current-written")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in generations:
        if old < number - 1 and old not in keep:
            trash = directory / f".retired-{old:06d}.{os.getpid()}.tmp"
            if retire(directory / f"gen-{old:06d}", trash):
                shutil.rmtree(trash, ignore_errors=True)
    return directory / name


def live_generation_number(directory: str | os.PathLike) -> int | None:
    """The number of the generation ``CURRENT`` names (None: no index there yet)."""
    try:
        name = (Path(directory) / CURRENT).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    match = _GENERATION.match(name)
    return int(match.group(1)) if match else None


def read_generation(directory: str | os.PathLike) -> tuple[Path, dict]:
    """The live generation's folder and its ``index.json``; IndexDirectoryError if unusable.

    Checks that ``CURRENT`` names an existing generation, that ``index.json`` is this
    package's, and that every file has the size recorded when it was written. Holds
    nothing: a writer may retire the generation two writes later. A reader that keeps
    using it calls :func:`open_generation`.
    """
    folder, info, lease = open_generation(directory)
    release(lease)
    return folder, info


def open_generation(directory: str | os.PathLike) -> tuple[Path, dict, int | None]:
    """As :func:`read_generation`, and a lease that keeps the generation on disk until released.

    Returns ``(folder, info, lease)``; pass the lease to
    :func:`skimgfeat.storage.generation_lock.release` when done with the folder. A
    writer that switches generations meanwhile does not disturb the reader: the reader
    keeps its generation whole, and reads ``CURRENT`` again when its generation was
    retired between reading ``CURRENT`` and taking the lease.
    """
    directory = Path(directory)
    if not directory.exists():
        raise IndexDirectoryError(directory, "does not exist (build one with `skimgfeat index build`)")
    if not directory.is_dir():
        raise IndexDirectoryError(directory, "is a file, not an index folder")
    for _ in range(100):
        current = directory / CURRENT
        if not current.is_file():
            raise IndexDirectoryError(directory, "has no CURRENT file: not a skimgfeat index")
        name = current.read_text(encoding="utf-8", errors="replace").strip()
        folder = directory / name
        if not _GENERATION.match(name):
            raise IndexDirectoryError(directory, f"CURRENT names {name[:40]!r}, which is not a generation folder here")
        try:
            lease = hold_generation(folder)
        except FileNotFoundError:
            if live_generation_number(directory) == int(name[4:]):
                raise IndexDirectoryError(directory, f"CURRENT names {name[:40]!r}, which is not a generation "
                                                     "folder here") from None
            continue  # retired meanwhile: a newer generation is live
        try:
            return folder, _checked_info(directory, folder), lease
        except BaseException:
            release(lease)
            raise
    raise IndexDirectoryError(directory, "changes faster than it can be read (100 generations in a row)")


def open_named_generation(directory: str | os.PathLike, name: str) -> tuple[Path, dict, int | None]:
    """As :func:`open_generation`, for the generation ``name`` (``gen-000007``) whether live or not.

    IndexDirectoryError when it is no longer (or never was) on disk, or is unusable.
    """
    directory = Path(directory)
    if not _GENERATION.match(str(name)):
        raise IndexDirectoryError(directory, f"{str(name)[:40]!r} is not a generation name")
    folder = directory / name
    try:
        lease = hold_generation(folder)
    except FileNotFoundError:
        raise IndexDirectoryError(folder, "is no longer on disk") from None
    try:
        return folder, _checked_info(directory, folder), lease
    except BaseException:
        release(lease)
        raise


def _checked_info(directory: Path, folder: Path) -> dict:
    if not folder.is_dir():
        raise IndexDirectoryError(directory, f"CURRENT names {folder.name[:40]!r}, which is not a generation "
                                             "folder here")
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise IndexDirectoryError(folder / INFO_FILE, f"unreadable ({error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IndexDirectoryError(folder / INFO_FILE, "is not a skimgfeat index description")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise IndexDirectoryError(directory, f"was written by a newer skimgfeat (format {info['format_version']})")
    for file, size in info.get("files", {}).items():
        path = folder / file
        if not path.is_file():
            raise IndexDirectoryError(path, "is missing")
        if path.stat().st_size != size:
            raise IndexDirectoryError(path, f"has {path.stat().st_size} bytes, {size} were written: truncated "
                                            "or altered")
    return info


def _remove_leftovers(directory: Path) -> None:
    """What writers that were killed left (only the lock holder calls this): staging and retired
    folders, and generations renamed into place that ``CURRENT`` never named."""
    live = live_generation_number(directory) or 0
    for entry in directory.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif (match := _GENERATION.match(entry.name)) and int(match.group(1)) > live and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _generations(directory: Path) -> list[int]:
    return sorted(int(match.group(1)) for entry in directory.iterdir()
                  if entry.is_dir() and (match := _GENERATION.match(entry.name)))
