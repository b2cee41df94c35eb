"""Assembling a transform's result: one preallocated array, filled from the cache and the stream.

The result array is allocated once, NaN-filled: ``(n_samples, width)``, or with several
photos per sample one row per listed photo, sample after sample
(:class:`~skimgfeat.RaggedPhotos`), so memory follows the photos, never
samples x the largest sample. Each distinct photo's vector is written straight into its
place, whether it comes from the feature cache or from the embedding stream, and a photo
listed more than once is embedded once and copied to its other places at the end. No
intermediate matrix of all features exists, so peak memory is the result plus a batch.

This module drives the loop; the feature cache (:class:`~skimgfeat.storage.cache.FeatureCache`)
is a store it asks: which entries are there (``get``), which missing ones this process
computes (``claim``, so parallel workers embed each photo once), what another process
finished meanwhile (``wait``), and where a computed vector goes (``put``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..exceptions import ImageLoadError
from ..storage.cache import CLAIM_CHUNK, WAIT_TIMEOUT, FeatureCache, feature_namespace
from ..storage.output import progress_bar
from .image_loading import default_max_pixels
from .inference import EmbeddedBatch
from .inputs import ImageInput
from .ragged import RaggedPhotos

# Embeds the paths at the given positions: yields (positions, vectors, positions that failed).
Compute = Callable[[list[int]], Iterator[tuple[list[int], np.ndarray, set[int]]]]


@dataclass
class Embedded:
    """A transform's features, its failures in input order, and how many photos ran through the network."""

    features: np.ndarray | RaggedPhotos
    errors: list[ImageLoadError]
    n_embedded: int


def embed_input(
    data: ImageInput,
    stream: Callable[[Sequence], Iterator[EmbeddedBatch]],
    width: int,
    cache: FeatureCache | None = None,
    progress: bool = False,
) -> Embedded:
    """Embed the distinct photos of ``data`` through ``stream`` (and ``cache``) into one result.

    ``stream(paths)`` yields :class:`~skimgfeat.engine.inference.EmbeddedBatch` es in
    order (e.g. ``CNNImageEmbedder.iter_transform``). Several photos per sample give a
    :class:`~skimgfeat.RaggedPhotos`, one photo per sample a 2-D array.
    """
    paths = data.unique_paths()
    layout = data.layout(paths, width)
    view = layout.out
    failures: list[tuple[int, ImageLoadError]] = []

    def compute(positions: list[int]) -> Iterator[tuple[list[int], np.ndarray, set[int]]]:
        for batch in stream([paths[i] for i in positions]) if positions else ():
            block = positions[batch.start : batch.start + len(batch.features)]
            failed = {positions[position] for position, _ in batch.errors}
            failures.extend((positions[position], error) for position, error in batch.errors)
            yield block, batch.features, failed

    with progress_bar(len(paths), enabled=progress) as bar:
        if cache is None:
            for block, vectors, _ in compute(list(range(len(paths)))):
                view[layout.rows[block]] = vectors
                bar.update(len(block))
            n_embedded = len(paths)
        else:
            n_embedded = fill_through_cache(cache, paths, view, layout.rows, compute, bar.update)
    errors = [error for _, error in sorted(failures, key=lambda item: item[0])]
    return Embedded(layout.complete(), errors, n_embedded)


def fill_through_cache(
    cache: FeatureCache,
    paths: Sequence,
    out: np.ndarray,
    rows: np.ndarray,
    compute: Compute,
    progress: Callable[[int], None],
    wait_timeout: float = WAIT_TIMEOUT,
) -> int:
    """Fill ``out[rows[i]]`` with the vector of ``paths[i]``: from ``cache``, else by ``compute`` (and store it).

    Keys are taken from the files before anything is decoded, so a file changed
    meanwhile never gets these vectors under the key of its new version. Missing
    entries are claimed ``CLAIM_CHUNK`` at a time; what another process is computing
    is waited for (at most ``wait_timeout`` seconds each) and computed here when it
    did not get stored. ``progress(n)`` is told of every ``n`` rows filled. Returns
    how many rows ``compute`` produced.
    """
    keys = cache.keys(paths)
    misses = []
    for i, key in enumerate(keys):
        vector = cache.get(key)
        if vector is None:
            misses.append(i)
        else:
            out[rows[i]] = vector
    progress(len(paths) - len(misses))
    writable = True

    def run(positions_to_compute: list[int]) -> None:
        nonlocal writable
        for positions, vectors, failed in compute(positions_to_compute):
            out[rows[np.asarray(positions, dtype=np.intp)]] = vectors
            for position, vector in zip(positions, vectors):
                if writable and position not in failed:
                    writable = cache.put(keys[position], vector)  # one warning, then no more tries
            progress(len(positions))

    computed, elsewhere = 0, []
    for start in range(0, len(misses), CLAIM_CHUNK):
        chunk = misses[start : start + CLAIM_CHUNK]
        with cache.claim([keys[i] for i in chunk]) as claimed:
            mine = [chunk[k] for k in sorted(claimed)]
            run(mine)
        computed += len(mine)
        elsewhere += [row for k, row in enumerate(chunk) if k not in claimed]
    left = []
    for position in elsewhere:  # another process was computing these: take its results
        vector = cache.wait(keys[position], wait_timeout)
        if vector is None:
            left.append(position)
        else:
            out[rows[position]] = vector
            progress(1)
    run(left)
    return computed + len(left)


def embedder_cache(directory, model_info: dict, max_pixels: int | None, decode_device: str | None) -> FeatureCache:
    """The feature cache of a fitted embedder: its namespace holds everything that changes the features."""
    limit = default_max_pixels() if max_pixels is None else max_pixels
    return FeatureCache(directory, feature_namespace(model_info, max_pixels=limit, decode_device=decode_device))
