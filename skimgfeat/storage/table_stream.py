"""The final tables of a CLI run, streamed from its gathered checkpoint chunk by chunk.

Rows are read from the checkpoint's :class:`~skimgfeat.storage.checkpoint.Gathered`
file (each part was read once to make it) a few thousand at a time and written as one
Parquet row group (or CSV block) each, so peak memory stays that of one chunk whether
a run has a thousand images or a million: only the paths and failure messages of all
rows are held at once. The by-item table is streamed in
``item_id`` order (the order :func:`~skimgfeat.extractor.aggregate_features_by_item`
gives), cutting chunks at item boundaries so that every item is aggregated whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..schema import FEATURE_PREFIX, item_id_from_name
from .checkpoint import Gathered
from .io import printable

CHUNK_ROWS = 4096


class FeatureStatistics:
    """Running statistics of the feature rows of the images that loaded, for the summary."""

    def __init__(self, n_features: int) -> None:
        self.count = 0
        self.sum = np.zeros(n_features)
        self.sum_of_squares = np.zeros(n_features)
        self.zeros = np.zeros(n_features, dtype=np.int64)
        self.minimum, self.maximum = np.inf, -np.inf
        self.sample: pd.DataFrame | None = None

    def add(self, table: pd.DataFrame, feature_columns: list[str], good: np.ndarray) -> None:
        values = table.loc[good, feature_columns].to_numpy(dtype=np.float64)
        if not len(values):
            return
        self.count += len(values)
        self.sum += values.sum(axis=0)
        self.sum_of_squares += np.square(values).sum(axis=0)
        self.zeros += (values == 0).sum(axis=0)
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        if self.sample is None or len(self.sample) < 3:
            rows = table.loc[good].head(3)
            self.sample = rows if self.sample is None else pd.concat([self.sample, rows]).head(3)

    def per_feature_mean(self) -> np.ndarray:
        return self.sum / self.count

    def per_feature_std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.sum_of_squares / self.count - self.per_feature_mean() ** 2, 0.0))

    def overall_mean(self) -> float:
        return float(self.sum.sum() / (self.count * len(self.sum)))

    def overall_std(self) -> float:
        n = self.count * len(self.sum)
        return float(np.sqrt(max(self.sum_of_squares.sum() / n - self.overall_mean() ** 2, 0.0)))


def raw_table_chunks(
    gathered: Gathered,
    relative: Sequence[str],
    messages: dict[int, str],
    make_table: Callable,
    on_chunk: Callable[[pd.DataFrame], None] | None = None,
) -> Iterator[pd.DataFrame]:
    """The per-image table in listing order, ``CHUNK_ROWS`` rows at a time.

    ``make_table(paths, features, errors)`` builds one chunk (the CLI passes
    :func:`~skimgfeat.extractor.features_table`); ``on_chunk`` sees every chunk.
    """
    for start in range(0, max(len(relative), 1), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(relative))
        features = gathered.read(range(start, stop))
        errors = {i - start: messages[i] for i in range(start, stop) if i in messages}
        table = make_table(relative[start:stop], features, errors)
        if on_chunk is not None:
            on_chunk(table)
        yield table


def item_table_chunks(
    gathered: Gathered,
    relative: Sequence[str],
    make_table: Callable,
    aggregate: Callable[[pd.DataFrame], pd.DataFrame],
    on_chunk: Callable[[pd.DataFrame], None] | None = None,
) -> Iterator[pd.DataFrame]:
    """The by-item table in ``item_id`` order, aggregated a chunk of whole items at a time."""
    items = [item_id_from_name(Path(printable(path)).name) for path in relative]
    order = sorted(range(len(relative)), key=items.__getitem__)
    start = 0
    while True:
        stop = min(start + CHUNK_ROWS, len(order))
        while 0 < stop < len(order) and items[order[stop]] == items[order[stop - 1]]:
            stop += 1  # never split an item between two chunks
        chosen = order[start:stop]
        features = gathered.read(chosen)
        table = aggregate(make_table([relative[i] for i in chosen], features, None))
        # A chunk of only failed photos aggregates to float64 NaN; every chunk must have one schema.
        table = table.astype({column: np.float32 for column in table.columns if column.startswith(FEATURE_PREFIX)})
        if on_chunk is not None:
            on_chunk(table)
        yield table
        start = stop
        if start >= len(order):
            return
