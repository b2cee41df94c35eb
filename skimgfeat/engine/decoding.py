"""The one decode-and-batch loop: files in, stacked batches and per-file errors out.

Embedding (:func:`skimgfeat.engine.inference.embed_stream`), fine-tuning, the quality
measures and the int8 calibration all read photos through :func:`decode_batches`:

* each file is decoded inside a ``try`` of its own, so one bad file costs one row,
  never a batch, and its error names the file and the reason;
* decoding (file read, JPEG/PNG/WebP decode, resize, crop) runs on threads: Pillow
  releases the GIL for all of it, so threads overlap decoding with whatever consumes
  the batches, without the start-up and pickling cost of processes;
* results come back in input order through a bounded window, so memory stays flat
  however many files pass;
* by default the work goes to the process-wide decode pool
  (:func:`skimgfeat.engine.threads.leased_pool`), so concurrent calls never multiply
  threads.

``decode`` may be any function of one path returning a fixed-shape array: the
quality measures pass one that returns 11 numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..exceptions import ImageLoadError
from .image_loading import load_rgb_image
from .preprocessing import Preprocessing
from .threads import POOL_KINDS, default_decode_workers, leased_pool

ON_ERROR = ("raise", "nan")


def decode_pixels(path, preprocessing: Preprocessing, max_pixels: int | None) -> np.ndarray:
    """One file -> ``(crop, crop, 3)`` uint8 pixels, or ImageLoadError."""
    image = load_rgb_image(path, max_pixels=max_pixels, draft_size=preprocessing.draft_size)
    try:
        return preprocessing.crop_pixels(image)
    finally:
        image.close()


def pixel_decoder(preprocessing: Preprocessing, max_pixels: int | None) -> Callable:
    """``decode(path)``: :func:`decode_pixels` with this recipe and pixel limit."""

    def decode(path) -> np.ndarray:
        return decode_pixels(path, preprocessing, max_pixels)

    return decode


def decode_or_error(decode: Callable, path) -> np.ndarray | ImageLoadError:
    """``decode(path)``, or the ImageLoadError that says which file failed and why."""
    try:
        return decode(path)
    except ImageLoadError as error:
        return error
    except Exception as error:  # noqa: BLE001 - whatever a decoder throws, it costs one row
        return ImageLoadError(path, "corrupt", f"{type(error).__name__}: {error}")


def iter_decoded(
    paths: Iterable, decode: Callable, n_workers: int | None = None, window: int | None = None
) -> Iterator[np.ndarray | ImageLoadError]:
    """Decode ``paths`` on threads, yielding each result (or its error) in input order.

    ``n_workers=None`` leases the process-wide decode pool sized to
    :func:`~skimgfeat.engine.threads.default_decode_workers`; a number runs a pool of
    that many threads for this call only (none with one: decoding then runs in the
    calling thread). At most ``window`` files (default: 4 per thread) are in flight,
    so a slow consumer never makes memory grow.
    """
    workers = default_decode_workers() if n_workers is None else n_workers
    if workers <= 1:
        for path in paths:
            yield decode_or_error(decode, path)
        return
    window = window or 4 * workers
    lease = leased_pool("decode", workers) if n_workers is None else _private_pool(workers)
    with lease as pool:
        pending: deque[Future] = deque()
        try:
            for path in paths:
                pending.append(pool.submit(decode_or_error, decode, path))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@contextmanager
def _private_pool(n_workers: int) -> Iterator[ThreadPoolExecutor]:
    """A decode pool that lives for one call."""
    pool = POOL_KINDS["decode"](n_workers)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)


def iter_decoded_in_batches(
    paths: Sequence, decode_batch: Callable[[Sequence], list], batch_size: int
) -> Iterator[np.ndarray | ImageLoadError]:
    """Decode ``paths`` ``batch_size`` at a time by ``decode_batch``, one batch ahead on a thread.

    For decoders that work on whole batches (JPEG on the GPU,
    :mod:`skimgfeat.engine.gpu_decode`); ``decode_batch`` returns one result or
    ImageLoadError per path.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="skimgfeat-decode") as pool:
        ahead: deque[Future] = deque()
        for start in range(0, len(paths), batch_size):
            ahead.append(pool.submit(decode_batch, paths[start : start + batch_size]))
            if len(ahead) > 1:
                yield from ahead.popleft().result()
        while ahead:
            yield from ahead.popleft().result()


@dataclass
class DecodedBatch:
    """``size`` consecutive inputs starting at position ``start``, decoded.

    ``good`` are the offsets (within the batch) of the inputs that decoded, ``stacked``
    their results stacked along a first axis (None when none did), ``errors`` the
    ``(position, ImageLoadError)`` of the others, positions counted from the first input.
    """

    start: int
    size: int
    good: np.ndarray
    stacked: np.ndarray | None
    errors: list[tuple[int, ImageLoadError]] = field(default_factory=list)

    @property
    def positions(self) -> np.ndarray:
        """Positions (counted from the first input) of the inputs that decoded."""
        return self.start + self.good


def decode_batches(
    paths: Sequence,
    decode: Callable,
    batch_size: int,
    *,
    on_error: str = "raise",
    n_workers: int | None = None,
    decode_batch: Callable[[Sequence], list] | None = None,
) -> Iterator[DecodedBatch]:
    """Decode ``paths`` in order and group them into :class:`DecodedBatch` es of ``batch_size``.

    Parameters
    ----------
    paths : sequence of paths
    decode : callable
        One path -> a fixed-shape array (e.g. :func:`pixel_decoder`); anything it raises
        becomes that file's ImageLoadError.
    batch_size : int
    on_error : {"raise", "nan"}, default="raise"
        ``"raise"``: the first failing input (in input order) raises its ImageLoadError.
        ``"nan"``: failures are reported in each batch's ``errors`` and left out of ``stacked``.
    n_workers : int or None, default=None
        Decode threads: None leases the process-wide pool; see :func:`iter_decoded`.
    decode_batch : callable or None, default=None
        Decodes a list of paths at once (GPU decoding); replaces ``decode`` when given.

    Examples
    --------
    >>> import numpy as np
    >>> batches = list(decode_batches(["1", "22", "x"], lambda p: np.array([int(p)]), 2, on_error="nan"))
    >>> batches[0].stacked.ravel().tolist(), batches[1].stacked
    ([1, 22], None)
    >>> [(position, error.path) for position, error in batches[1].errors]
    [(2, 'x')]
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if decode_batch is not None:
        decoded = iter_decoded_in_batches(paths, decode_batch, batch_size)
    else:
        workers = default_decode_workers() if n_workers is None else n_workers
        decoded = iter_decoded(paths, decode, n_workers, window=max(batch_size * 2, workers * 4))
    try:
        yield from _grouped(decoded, len(paths), batch_size, on_error)
    finally:
        decoded.close()


def _grouped(decoded: Iterator, n_paths: int, batch_size: int, on_error: str) -> Iterator[DecodedBatch]:
    for start in range(0, n_paths, batch_size):
        results = [next(decoded) for _ in range(min(batch_size, n_paths - start))]
        errors = [(start + i, r) for i, r in enumerate(results) if isinstance(r, ImageLoadError)]
        if errors and on_error == "raise":
            raise errors[0][1]
        good = np.asarray([i for i, r in enumerate(results) if not isinstance(r, ImageLoadError)], dtype=np.intp)
        stacked = np.stack([results[i] for i in good]) if len(good) else None
        yield DecodedBatch(start, len(results), good, stacked, errors)
