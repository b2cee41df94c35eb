"""Duplicate photos: groups of rows of a feature table that are near-copies of each other."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .similarity import SimilarityIndex

# Chosen by benchmarks/duplicate_threshold.py on generated copies of real photos (see benchmarks/README.md).
DEFAULT_DUPLICATE_THRESHOLD = 0.1


def find_duplicates(index: SimilarityIndex, threshold: float = DEFAULT_DUPLICATE_THRESHOLD) -> pd.DataFrame:
    """Groups of near-duplicate photos: rows linked by pairs closer than ``threshold``.

    Two rows whose cosine distance is at most ``threshold`` are duplicates; groups are
    the connected components of those pairs, so a copy of a copy joins its original.

    Parameters
    ----------
    index : SimilarityIndex
    threshold : float, default=DEFAULT_DUPLICATE_THRESHOLD
        Cosine distance; the default was measured on resized, recompressed, cropped and
        re-exposed copies of real photos (see the docs for its precision and recall).

    Returns
    -------
    DataFrame
        Columns ``group`` (numbered from 0 in table order) and the key column, one row
        per member of a group of two or more, in table order within each group.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat import SimilarityIndex, find_duplicates
    >>> vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.02], [0.01, 1.0]])
    >>> find_duplicates(SimilarityIndex(["a", "b", "c", "d"], vectors), threshold=0.01)
       group image_path
    0      0          a
    1      0          c
    2      1          b
    3      1          d
    """
    from scipy.sparse.csgraph import connected_components

    if not 0 <= threshold <= 2:
        raise ValueError(f"threshold must be a cosine distance between 0 and 2, got {threshold!r}")
    if len(index) < 2:
        return pd.DataFrame({"group": pd.Series(dtype=int), index.key: pd.Series(dtype=object)})
    graph = index._nearest().radius_neighbors_graph(index.vectors, radius=threshold, mode="connectivity")
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] >= 2)
    # Groups numbered by their first member in table order.
    first_seen: dict[int, int] = {}
    for row in members:
        first_seen.setdefault(int(labels[row]), len(first_seen))
    groups = np.asarray([first_seen[int(labels[row])] for row in members], dtype=int)
    order = np.argsort(groups, kind="stable")
    return pd.DataFrame({"group": groups[order], index.key: index.names[members][order]})
