"""Duplicate photos: pairs and groups of rows of a feature table that are copies of each other.

Two stages. The CNN features propose *candidate* pairs: rows within a generous cosine
distance (:data:`DEFAULT_CANDIDATE_DISTANCE`), found by the index's own pair search
(:meth:`SimilarityIndex.neighbour_pairs`, :meth:`SimilarityIndex.range_search`: exact
in memory, or a FAISS index directory).
The copy check (:mod:`skimgfeat.matching.copy_check`) then compares the photos' perceptual
hashes: a harshly re-encoded copy keeps its structure, a re-shoot of the same shelf
moments later does not, although both sit as close in feature space. Only pairs passing
both are duplicates. Without the copy check, one feature threshold decides
(:data:`DEFAULT_DUPLICATE_THRESHOLD`), as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .copy_check import COPY, COPY_THRESHOLD, DIFFERENT, N_HASHES, UNREADABLE, PhotoHashes, copy_distance

if TYPE_CHECKING:  # the index arrives built: importing it here would import torch for `skimgfeat --help`
    from ..search.similarity import SimilarityIndex

# Chosen by benchmarks/duplicate_threshold.py on generated copies of real photos (see benchmarks/README.md).
DEFAULT_DUPLICATE_THRESHOLD = 0.1
DEFAULT_CANDIDATE_DISTANCE = 0.3

PAIR_COLUMNS = ("image_a", "image_b", "feature_distance", "copy_score", "verdict", "reason")


def duplicate_pairs(
    index: SimilarityIndex,
    *,
    max_distance: float | None = None,
    copy_check: bool | PhotoHashes = True,
    copy_threshold: int = COPY_THRESHOLD,
    n_workers: int | None = None,
) -> pd.DataFrame:
    """Every candidate pair of rows of ``index``, with the copy check's verdict.

    Parameters
    ----------
    index : SimilarityIndex
        Per-image rows; their photos are found by :meth:`SimilarityIndex.photo_path`.
    max_distance : float or None
        Cosine distance of the candidate pairs; default
        :data:`DEFAULT_CANDIDATE_DISTANCE` with the copy check,
        :data:`DEFAULT_DUPLICATE_THRESHOLD` without.
    copy_check : bool or PhotoHashes, default=True
        The photos' hashes (e.g. ``PhotoHashes.read("out/image_hashes.parquet")``); a
        photo they lack, or every photo when True, is hashed now. False: every
        candidate pair is a copy.
    copy_threshold : int, default=COPY_THRESHOLD
        Largest copy distance (bits) of a copy.
    n_workers : int or None
        Threads hashing photos now.

    Returns
    -------
    DataFrame
        :data:`PAIR_COLUMNS`: the two names (table order), ``feature_distance``,
        ``copy_score`` (copy distance in bits, NaN without the check or when a photo
        is unreadable), ``verdict`` (``"copy"``, ``"different"`` or ``"unreadable"``)
        and ``reason`` (why a photo could not be read, else empty).

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import SimilarityIndex
    >>> index = SimilarityIndex(["a", "b", "c"], np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]]))
    >>> duplicate_pairs(index, copy_check=False)[["image_a", "image_b", "verdict"]]
      image_a image_b verdict
    0       a       b    copy
    """
    rows_a, rows_b, distances, scores, verdicts, reasons = _scored_rows(
        index, max_distance, copy_check, copy_threshold, n_workers)
    return _pair_table(index.names[rows_a], index.names[rows_b], distances, scores, verdicts, reasons)


def duplicate_groups(
    pairs: pd.DataFrame, key: str = "image_path", *, order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Groups of the accepted pairs of :func:`duplicate_pairs`: their connected components.

    Parameters
    ----------
    pairs : DataFrame
        ``image_a``, ``image_b`` and ``verdict``; the ``"copy"`` pairs link their photos.
    key : str, default="image_path"
        The name of the member column.
    order : sequence of str or None
        The table's names in table order: members are listed in it and groups
        numbered by their first member. None: in order of first appearance in ``pairs``.

    Returns
    -------
    DataFrame
        ``group`` (numbered from 0), the key column and
        ``chained``: True for every member of a group in which some two photos are
        not themselves a copy pair (linked only through others, a chain to review).

    Examples
    --------
    >>> import pandas as pd
    >>> pairs = pd.DataFrame({"image_a": ["a", "b", "d"], "image_b": ["b", "c", "e"],
    ...                       "verdict": ["copy", "copy", "different"]})
    >>> duplicate_groups(pairs)
       group image_path  chained
    0      0          a     True
    1      0          b     True
    2      0          c     True
    """
    accepted = pairs[pairs["verdict"] == COPY]
    names = pd.unique(accepted[["image_a", "image_b"]].to_numpy().ravel())  # in order of first appearance
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        names = np.asarray(sorted(names, key=rank.__getitem__), dtype=object)
    position = {name: i for i, name in enumerate(names)}
    a = accepted["image_a"].map(position).to_numpy(dtype=np.int64)
    b = accepted["image_b"].map(position).to_numpy(dtype=np.int64)
    return _components(a, b, np.asarray(names, dtype=object), key)


def find_duplicates(
    index: SimilarityIndex,
    threshold: float | None = None,
    *,
    copy_check: bool | PhotoHashes = False,
    copy_threshold: int = COPY_THRESHOLD,
) -> pd.DataFrame:
    """Groups of duplicate photos: :func:`duplicate_pairs` grouped by :func:`duplicate_groups`.

    Parameters
    ----------
    index : SimilarityIndex
    threshold : float or None
        Cosine distance of the candidate pairs; default
        :data:`DEFAULT_DUPLICATE_THRESHOLD` without the copy check (then every pair
        this close is a duplicate), :data:`DEFAULT_CANDIDATE_DISTANCE` with it.
    copy_check : bool or PhotoHashes, default=False
        False: features alone decide. True or the photos' hashes: the two-stage
        decision of ``skimgfeat duplicates`` (photos the hashes lack are hashed now).
    copy_threshold : int, default=COPY_THRESHOLD

    Returns
    -------
    DataFrame
        Columns ``group`` (numbered from 0 in table order), the key column and
        ``chained`` (see :func:`duplicate_groups`), one row per member of a group.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import SimilarityIndex, find_duplicates
    >>> vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.02], [0.01, 1.0]])
    >>> find_duplicates(SimilarityIndex(["a", "b", "c", "d"], vectors), threshold=0.01)
       group image_path  chained
    0      0          a    False
    1      0          c    False
    2      1          b    False
    3      1          d    False
    """
    rows_a, rows_b, _, _, verdicts, _ = _scored_rows(index, threshold, copy_check, copy_threshold, None)
    accepted = verdicts == COPY
    return _components(rows_a[accepted], rows_b[accepted], index.names, index.key)


def find_copies_against(
    index: SimilarityIndex,
    names: Sequence[str],
    vectors,
    *,
    photos: Sequence[str | os.PathLike | None] | None = None,
    max_distance: float | None = None,
    copy_check: bool | PhotoHashes = True,
    archive_hashes: bool | PhotoHashes = True,
    copy_threshold: int = COPY_THRESHOLD,
    n_workers: int | None = None,
) -> pd.DataFrame:
    """Which new photos already exist in an archive: candidate pairs (new, archived) with verdicts.

    The archive is not regrouped: each new photo is searched in ``index`` alone.

    Parameters
    ----------
    index : SimilarityIndex
        The archive.
    names : sequence of str
        The new photos' names (``image_a`` of the result).
    vectors : array-like of shape (n_new, n_features)
        Their features, from the network that made the archive's. NaN rows are skipped.
    photos : sequence of path or None
        The new photos' files (default: ``names``), for hashing.
    max_distance : float or None
        See :func:`duplicate_pairs`.
    copy_check : bool or PhotoHashes, default=True
        The new photos' hashes, True to hash them now, False for features alone.
    archive_hashes : bool or PhotoHashes, default=True
        The archive's hashes (its ``image_hashes.parquet``); photos they lack are hashed now.
    copy_threshold : int, default=COPY_THRESHOLD
    n_workers : int or None

    Returns
    -------
    DataFrame
        :data:`PAIR_COLUMNS`, ``image_a`` the new photo, ``image_b`` the archived one,
        nearest first for each new photo.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import SimilarityIndex
    >>> archive = SimilarityIndex(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> find_copies_against(archive, ["new"], [[0.98, 0.05]], copy_check=False)[["image_a", "image_b", "verdict"]]
      image_a image_b verdict
    0     new       a    copy
    """
    names = [str(name) for name in names]
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if len(vectors) != len(names):
        raise ValueError(f"need one feature row per new photo, got {len(names)} names and {len(vectors)} rows")
    photos = names if photos is None else list(photos)
    max_distance = _radius(max_distance, copy_check)
    valid = np.flatnonzero(~np.isnan(vectors).any(axis=1))
    queries, rows_b, distances = _range_pairs(index, vectors[valid], max_distance)
    rows_a = valid[queries]
    names_a = np.asarray(names, dtype=object)[rows_a]
    names_b = index.names[rows_b]
    if copy_check is False:
        return _unchecked_pairs(names_a, names_b, distances)
    wanted = sorted(set(rows_a.tolist()))
    new_hashes = copy_check if isinstance(copy_check, PhotoHashes) else None
    missing = [row for row in wanted if new_hashes is None or names[row] not in new_hashes]
    computed = PhotoHashes.compute([photos[row] for row in missing], [names[row] for row in missing],
                                   n_workers=n_workers)
    new_hashes = computed if new_hashes is None else new_hashes.merged(computed)
    old_hashes = _hashes_for(index, index.names[np.unique(rows_b)], archive_hashes, n_workers)
    verdicts = _copy_verdicts(rows_a, np.asarray(names, dtype=object), new_hashes, rows_b, index.names, old_hashes,
                              copy_threshold)
    return _pair_table(names_a, names_b, distances, *verdicts)


# -- the two stages -------------------------------------------------------------------


def _scored_rows(index: SimilarityIndex, max_distance, copy_check, copy_threshold: int, n_workers):
    """(rows_a, rows_b, feature distance, copy score, verdict, reason) arrays of the candidate pairs."""
    max_distance = _radius(max_distance, copy_check)
    rows_a, rows_b, distances = _candidate_pairs(index, max_distance)
    if copy_check is False:
        return (rows_a, rows_b, distances, np.full(len(rows_a), np.nan), np.full(len(rows_a), COPY, dtype=object),
                np.full(len(rows_a), "", dtype=object))
    hashes = _hashes_for(index, index.names[np.unique(np.concatenate([rows_a, rows_b]))], copy_check, n_workers)
    return (rows_a, rows_b, distances,
            *_copy_verdicts(rows_a, index.names, hashes, rows_b, index.names, hashes, copy_threshold))


def _components(a: np.ndarray, b: np.ndarray, names: np.ndarray, key: str) -> pd.DataFrame:
    """Groups of the pairs ``(names[a], names[b])``: members in the order of ``names``, numbered by the first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    members = np.unique(np.concatenate([a, b]))
    if len(members) == 0:
        return pd.DataFrame({"group": pd.Series(dtype=int), key: pd.Series(dtype=object),
                             "chained": pd.Series(dtype=bool)})
    a, b = np.searchsorted(members, a), np.searchsorted(members, b)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(members), len(members)))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    links = np.bincount(labels[a], minlength=len(sizes))  # each accepted pair once, inside one component
    chained = links < sizes * (sizes - 1) // 2
    _, first = np.unique(labels, return_index=True)  # members are sorted: a label's first member is its first
    groups = np.argsort(np.argsort(first))[labels]
    order = np.argsort(groups, kind="stable")
    return pd.DataFrame({"group": groups[order], key: names[members[order]], "chained": chained[labels[order]]})


def _radius(max_distance: float | None, copy_check) -> float:
    if max_distance is None:
        return DEFAULT_DUPLICATE_THRESHOLD if copy_check is False else DEFAULT_CANDIDATE_DISTANCE
    if not 0 <= max_distance <= 2:
        raise ValueError(f"threshold must be a cosine distance between 0 and 2, got {max_distance!r}")
    return float(max_distance)


def _candidate_pairs(index: SimilarityIndex, max_distance: float):
    """(row_a, row_b, distance) of every pair of rows within ``max_distance``, row_a < row_b."""
    rows_a, rows_b, distances = index.neighbour_pairs(max_distance)
    return np.asarray(rows_a, dtype=np.int64), np.asarray(rows_b, dtype=np.int64), np.asarray(distances)


def _range_pairs(index: SimilarityIndex, vectors: np.ndarray, max_distance: float):
    """(query, row, distance) of every indexed row within ``max_distance`` of each query, nearest first."""
    if not len(vectors):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0)
    lims, distances, rows = index.range_search(vectors, max_distance)
    queries = np.repeat(np.arange(len(vectors)), np.diff(lims))
    order = np.lexsort((distances, queries))
    return queries[order], np.asarray(rows, dtype=np.int64)[order], np.asarray(distances)[order]


def _hashes_for(index: SimilarityIndex, names, given, n_workers) -> PhotoHashes:
    """Hashes of ``names``: from ``given`` where it has them, the rest computed from the index's photos now."""
    known = given if isinstance(given, PhotoHashes) else None
    names = np.asarray(names, dtype=object)
    todo = names if known is None else names[~known.contains(names)]
    computed = PhotoHashes.compute([index.photo_path(name) for name in todo], todo, n_workers=n_workers)
    return computed if known is None else known.merged(computed)


def _copy_verdicts(rows_a, names_a, hashes_a: PhotoHashes, rows_b, names_b, hashes_b: PhotoHashes,
                   copy_threshold: int):
    """(copy score, verdict, reason) of each candidate pair ``(names_a[rows_a[i]], names_b[rows_b[i]])``.

    Hashes are looked up once per photo, then gathered per pair by row: a table has far
    more candidate pairs than photos.
    """
    table_a, errors_a = _by_row(rows_a, names_a, hashes_a)
    table_b, errors_b = _by_row(rows_b, names_b, hashes_b)
    pair_errors_a, pair_errors_b = errors_a[rows_a], errors_b[rows_b]
    readable = (pair_errors_a == "") & (pair_errors_b == "")
    scores = np.full(len(rows_a), np.nan)
    scores[readable] = copy_distance(table_a[rows_a[readable]], table_b[rows_b[readable]])
    verdicts = np.full(len(rows_a), DIFFERENT, dtype=object)
    verdicts[scores <= copy_threshold] = COPY
    verdicts[~readable] = UNREADABLE
    reasons = np.full(len(rows_a), "", dtype=object)
    for i in np.flatnonzero(~readable):
        sides = ((names_a[rows_a[i]], pair_errors_a[i]), (names_b[rows_b[i]], pair_errors_b[i]))
        reasons[i] = "; ".join(f"{name}: {error}" for name, error in sides if error)
    return scores, verdicts, reasons


def _by_row(rows, names, hashes: PhotoHashes):
    """(hashes, errors) aligned with ``names``, filled for the ``rows`` in use."""
    used = np.unique(rows)
    table = np.zeros((len(names), N_HASHES), dtype=np.uint64)
    errors = np.full(len(names), "", dtype=object)
    table[used], errors[used] = hashes.lookup(names[used])
    return table, errors


def _unchecked_pairs(names_a, names_b, distances) -> pd.DataFrame:
    """Without the copy check every candidate pair is a copy."""
    return _pair_table(names_a, names_b, distances, np.full(len(distances), np.nan),
                       np.full(len(distances), COPY, dtype=object), np.full(len(distances), "", dtype=object))


def _pair_table(names_a, names_b, distances, scores, verdicts, reasons) -> pd.DataFrame:
    return pd.DataFrame({
        "image_a": pd.Series(np.asarray(names_a, dtype=object), dtype=object),
        "image_b": pd.Series(np.asarray(names_b, dtype=object), dtype=object),
        "feature_distance": np.asarray(distances, dtype=float),
        "copy_score": np.asarray(scores, dtype=float),
        "verdict": pd.Series(np.asarray(verdicts, dtype=object), dtype=object),
        "reason": pd.Series(list(reasons), dtype=object),
    })
