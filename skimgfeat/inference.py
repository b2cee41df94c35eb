"""The decode-and-infer engine shared by the estimator, the API and the CLI.

Decoding (file read, JPEG/PNG/WebP decode, resize, crop) runs in a thread pool:
Pillow releases the GIL for all of it, so threads overlap decoding with inference
without the start-up and pickling cost of processes. Each image is decoded inside a
``try`` of its own, so one bad file costs one row, never a batch. Results come back in
input order through a bounded window, so memory stays flat however many images pass.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .exceptions import ImageLoadError
from .image_loading import load_rgb_image
from .preprocessing import Preprocessing

# How much nicer than the model's thread decode threads run (0: same priority).
DECODE_NICENESS = 10


def decode_pixels(path, preprocessing: Preprocessing, max_pixels: int | None) -> np.ndarray:
    """One file -> ``(crop, crop, 3)`` uint8 pixels, or ImageLoadError."""
    image = load_rgb_image(path, max_pixels=max_pixels, draft_size=preprocessing.draft_size)
    try:
        return preprocessing.crop_pixels(image)
    finally:
        image.close()


def _decode_or_error(decode: Callable, path) -> np.ndarray | ImageLoadError:
    try:
        return decode(path)
    except ImageLoadError as error:
        return error
    except Exception as error:  # noqa: BLE001 - whatever a decoder throws, it costs one row
        return ImageLoadError(path, "corrupt", f"{type(error).__name__}: {error}")


def iter_decoded(
    paths: Iterable, decode: Callable, n_workers: int, window: int
) -> Iterator[np.ndarray | ImageLoadError]:
    """Decode ``paths`` on ``n_workers`` threads, yielding results in input order.

    At most ``window`` images are in flight, so a slow consumer never makes memory grow.
    """
    if n_workers <= 1:
        for path in paths:
            yield _decode_or_error(decode, path)
        return
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="skimgfeat-decode", initializer=_lower_decode_priority)
    with pool:
        try:
            for path in paths:
                pending.append(pool.submit(_decode_or_error, decode, path))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _lower_decode_priority() -> None:
    """Run this decode thread at a lower scheduling priority than the model's thread.

    On a machine with as many decode threads as cores, the forward pass would otherwise
    get only its fair share of a core while it is the bottleneck; niced decoders take the
    cycles it leaves and yield the rest (and yield to other programs: polite on a laptop).
    Measured on 2 cores: MobileNetV2 JPEG end to end +17%, decode-bound runs unchanged
    (benchmarks/README.md). Per-thread niceness exists on Linux only; elsewhere a no-op.
    """
    step = int(os.environ.get("SKIMGFEAT_DECODE_NICENESS", DECODE_NICENESS))
    if step <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + step))
    except OSError:
        pass  # a sandbox that forbids it costs speed, never the run


@dataclass
class EmbeddedBatch:
    """Features for ``len(features)`` consecutive inputs starting at ``start``.

    Rows whose image failed are NaN; ``errors`` holds ``(position, ImageLoadError)``.
    """

    start: int
    features: np.ndarray
    errors: list[tuple[int, ImageLoadError]] = field(default_factory=list)


class ModelRunner:
    """Runs a headless network on uint8 pixel batches on one device.

    On CUDA the batch is copied from pinned memory without blocking, normalised on the
    GPU, optionally run under autocast, and a batch that runs out of memory is split in
    halves (and later batches kept at the smaller size) instead of failing the run.

    On the CPU each forward pass runs with ``n_threads`` intra-op threads (None:
    :func:`default_inference_threads`), set around the call and restored after it, so
    the caller's own torch thread setting is left as it was.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        preprocessing: Preprocessing,
        autocast_dtype: torch.dtype | None = None,
        n_threads: int | None = None,
    ) -> None:
        self.module = module
        self.device = device
        self.preprocessing = preprocessing
        self.autocast_dtype = autocast_dtype
        self.max_batch: int | None = None
        self.n_threads = n_threads if n_threads is not None else default_inference_threads()
        self.memory_format = getattr(module, "input_memory_format", torch.channels_last)
        # Batches that may run at once: a module that sizes its own threads (an ONNX
        # Runtime session, one thread per call) runs one call per inference thread.
        concurrent = device.type == "cpu" and getattr(module, "supports_concurrent_calls", False)
        self.parallel_calls = inference_layout().parallel_calls if concurrent else 1
        if concurrent:
            self.n_threads = None  # torch's thread count plays no part in such a call

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self.max_batch is not None and len(pixels) > self.max_batch:
            return np.concatenate(
                [self(pixels[i : i + self.max_batch]) for i in range(0, len(pixels), self.max_batch)]
            )
        try:
            return self._forward(pixels)
        except torch.cuda.OutOfMemoryError:
            if len(pixels) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(pixels) // 2
            self.max_batch = half
            return np.concatenate([self(pixels[:half]), self(pixels[half:])])

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(pixels)
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            batch = batch.to(self.device)
        threads = self.n_threads if self.device.type == "cpu" else None
        with torch.inference_mode(), _torch_threads(threads):
            inputs = self.preprocessing.normalize(batch, self.memory_format)
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    outputs = self.module(inputs)
            else:
                outputs = self.module(inputs)
            return outputs.float().cpu().numpy()


def embed_stream(
    paths: Sequence,
    run: Callable[[np.ndarray], np.ndarray],
    decode: Callable,
    n_features: int,
    batch_size: int,
    n_workers: int,
    on_error: str = "raise",
    parallel_calls: int = 1,
) -> Iterator[EmbeddedBatch]:
    """Yield :class:`EmbeddedBatch` es covering ``paths`` in order.

    With ``on_error="raise"`` the first failing input (in input order) raises its
    ImageLoadError; otherwise its row is NaN and the error is reported in the batch.
    A batch made only of failures still yields its rows, without running the model.
    ``parallel_calls`` batches may be inferred at once (``run`` must be thread-safe
    then); they are still yielded in input order.
    """
    window = max(batch_size * 2, n_workers * 4)
    decoded = iter_decoded(paths, decode, n_workers, window)
    batches = _decoded_batches(decoded, len(paths), n_features, batch_size, on_error)
    if parallel_calls <= 1:
        for batch, pixels in batches:
            if pixels is not None:
                batch.features[batch.good] = run(pixels)
            yield batch.embedded
        return
    yield from _infer_concurrently(batches, run, parallel_calls)


@dataclass
class _PendingBatch:
    embedded: EmbeddedBatch
    good: list[int]

    @property
    def features(self) -> np.ndarray:
        return self.embedded.features


def _decoded_batches(
    decoded: Iterator, n_paths: int, n_features: int, batch_size: int, on_error: str
) -> Iterator[tuple[_PendingBatch, np.ndarray | None]]:
    """Group decode results into batches: NaN-filled rows and the stacked pixels of the good ones."""
    start = 0
    while start < n_paths:
        size = min(batch_size, n_paths - start)
        results = [next(decoded) for _ in range(size)]
        errors = [(start + i, r) for i, r in enumerate(results) if isinstance(r, ImageLoadError)]
        if errors and on_error == "raise":
            decoded.close()
            raise errors[0][1]
        features = np.full((size, n_features), np.nan, dtype=np.float32)
        good = [i for i, r in enumerate(results) if not isinstance(r, ImageLoadError)]
        pixels = np.stack([results[i] for i in good]) if good else None
        yield _PendingBatch(EmbeddedBatch(start, features, errors), good), pixels
        start += size


def _infer_concurrently(batches: Iterator, run: Callable, parallel_calls: int) -> Iterator[EmbeddedBatch]:
    """Run up to ``parallel_calls`` batches at once on threads; yield them in order.

    One single-threaded call per core keeps every core busy without the barriers and
    spin-waits of intra-op parallelism; the (niced) decode threads fill what is left.
    """
    in_flight: deque[tuple[_PendingBatch, Future | None]] = deque()
    with ThreadPoolExecutor(parallel_calls, thread_name_prefix="skimgfeat-infer") as pool:
        try:
            for batch, pixels in batches:
                in_flight.append((batch, None if pixels is None else pool.submit(run, pixels)))
                if len(in_flight) >= parallel_calls:
                    yield _finish(*in_flight.popleft())
            while in_flight:
                yield _finish(*in_flight.popleft())
        finally:
            for _, future in in_flight:
                if future is not None:
                    future.cancel()


def _finish(batch: _PendingBatch, future: Future | None) -> EmbeddedBatch:
    if future is not None:
        batch.features[batch.good] = future.result()
    return batch.embedded


def default_decode_workers() -> int:
    """Decode threads: one per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_inference_threads() -> int:
    """Intra-op threads for the forward pass on the CPU: half the cores, at least one.

    Decoding keeps the other half busy. Measured on 2 cores (benchmarks/README.md): one
    inference thread beside two decode threads beats two threads competing with them,
    because intra-op parallelism costs extra core time (barriers, spinning) that decoding
    could use. ``SKIMGFEAT_INFERENCE_THREADS`` overrides it.
    """
    override = os.environ.get("SKIMGFEAT_INFERENCE_THREADS")
    if override:
        return max(1, int(override))
    return max(1, default_decode_workers() // 2)


@dataclass(frozen=True)
class InferenceLayout:
    """How the CPU inference budget is spent: threads per forward call, calls at once."""

    threads_per_call: int
    parallel_calls: int


def inference_layout() -> InferenceLayout:
    """The layout for modules that run concurrent calls (ONNX Runtime sessions).

    One thread per call and one call per core: independent single-threaded calls
    never wait on each other, while intra-op threads meet at a barrier after every
    layer (and spin there when a peer is descheduled). Decode threads, niced, take
    the cycles the calls leave. ``SKIMGFEAT_PARALLEL_BATCHES=N`` caps the calls at N,
    and with ``N=1`` that one call gets :func:`default_inference_threads` threads.
    Measured: benchmarks/README.md.
    """
    override = os.environ.get("SKIMGFEAT_PARALLEL_BATCHES")
    parallel = max(1, int(override)) if override else default_decode_workers()
    return InferenceLayout(1 if parallel > 1 else default_inference_threads(), parallel)


@contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n_threads is None or n_threads == previous:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
