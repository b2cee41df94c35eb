"""Assembling a transform's result: one preallocated array, filled from the cache and the stream.

The result array (``(n_samples, width)``, or ``(n_samples, max_images, width)`` with
several photos per sample) is allocated once, NaN-filled; each distinct photo's vector
is written straight into its place, whether it comes from the feature cache or from the
embedding stream, and a photo listed more than once is embedded once and copied to its
other places at the end. No intermediate matrix of all features exists, so peak memory
is the result plus a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..exceptions import ImageLoadError
from ..storage.cache import FeatureCache, feature_namespace
from ..storage.output import progress_bar
from .image_loading import default_max_pixels
from .inference import EmbeddedBatch
from .inputs import ImageInput


@dataclass
class Embedded:
    """A transform's features, its failures in input order, and how many photos ran through the network."""

    features: np.ndarray
    errors: list[ImageLoadError]
    n_embedded: int


def embed_input(
    data: ImageInput,
    stream: Callable[[Sequence], Iterator[EmbeddedBatch]],
    width: int,
    cache: FeatureCache | None = None,
    progress: bool = False,
) -> Embedded:
    """Embed the distinct photos of ``data`` through ``stream`` (and ``cache``) into one result array.

    ``stream(paths)`` yields :class:`~skimgfeat.engine.inference.EmbeddedBatch` es in
    order (e.g. ``CNNImageEmbedder.iter_transform``).
    """
    paths = data.unique_paths()
    layout = data.layout(paths, width)
    view = layout.rows_view
    failures: list[tuple[int, ImageLoadError]] = []

    def compute(positions: list[int]) -> Iterator[tuple[list[int], np.ndarray, set[int]]]:
        for batch in stream([paths[i] for i in positions]):
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
            n_embedded = cache.fill(paths, view, compute, rows=layout.rows, progress=bar.update)
    errors = [error for _, error in sorted(failures, key=lambda item: item[0])]
    return Embedded(layout.complete(), errors, n_embedded)


def embedder_cache(directory, model_info: dict, max_pixels: int | None, decode_device: str | None) -> FeatureCache:
    """The feature cache of a fitted embedder: its namespace holds everything that changes the features."""
    limit = default_max_pixels() if max_pixels is None else max_pixels
    return FeatureCache(directory, feature_namespace(model_info, max_pixels=limit, decode_device=decode_device))
