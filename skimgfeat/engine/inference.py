"""The decode-and-infer engine shared by the estimator, the API and the CLI.

Decoding (file read, JPEG/PNG/WebP decode, resize, crop) runs in a thread pool:
Pillow releases the GIL for all of it, so threads overlap decoding with inference
without the start-up and pickling cost of processes. Each image is decoded inside a
``try`` of its own, so one bad file costs one row, never a batch. Results come back in
input order through a bounded window, so memory stays flat however many images pass.

Several calls at once (threads sharing one fitted embedder: Dask's threaded scheduler, a
``dask.distributed`` worker running several tasks, joblib's threading backend) share the
process-wide decode and inference pools sized to :func:`cpu_budget`, so concurrent calls
never multiply threads, and nothing process-wide (such as ``torch.set_num_threads``) is
changed per call.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..exceptions import ImageLoadError
from .environment import positive_int_from_env
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
    paths: Iterable, decode: Callable, n_workers: int, window: int, pool: ThreadPoolExecutor | None = None
) -> Iterator[np.ndarray | ImageLoadError]:
    """Decode ``paths`` on ``n_workers`` threads, yielding results in input order.

    At most ``window`` images are in flight, so a slow consumer never makes memory grow.
    With ``pool`` (e.g. :func:`shared_decode_pool`) the work goes there and
    ``n_workers`` is ignored; otherwise a pool of ``n_workers`` threads lives for this
    call (none with one worker: decoding then runs in the calling thread).
    """
    if pool is None and n_workers <= 1:
        for path in paths:
            yield _decode_or_error(decode, path)
        return
    owned = pool is None
    if owned:
        pool = _decode_pool(n_workers)
    pending: deque[Future] = deque()
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
        if owned:
            pool.shutdown(wait=True)


def _decode_pool(n_workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n_workers, thread_name_prefix="skimgfeat-decode", initializer=_lower_decode_priority)


def _infer_pool(n_workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n_workers, thread_name_prefix="skimgfeat-infer")


_POOL_FACTORIES = {"decode": _decode_pool, "infer": _infer_pool}
_shared_pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}
_shared_pools_lock = threading.Lock()


def shared_pool(kind: str, n_workers: int) -> ThreadPoolExecutor:
    """The process-wide ``"decode"`` or ``"infer"`` pool, resized to ``n_workers`` threads.

    Every stream uses these, so four threads transforming at once share ``n_workers``
    threads of each kind instead of starting four times as many. A resize lets the old
    pool finish the work already given to it.
    """
    with _shared_pools_lock:
        size, pool = _shared_pools.get(kind, (0, None))
        if pool is None or size != n_workers:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = _POOL_FACTORIES[kind](n_workers)
            _shared_pools[kind] = (n_workers, pool)
        return pool


def shared_decode_pool(n_workers: int) -> ThreadPoolExecutor | None:
    """The process-wide decode pool (see :func:`shared_pool`); None for one worker: decode inline."""
    return shared_pool("decode", n_workers) if n_workers > 1 else None


def _forget_shared_pools() -> None:
    """In a forked child the parent's pool threads do not exist: start new pools there."""
    global _shared_pools_lock
    _shared_pools.clear()
    _shared_pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared_pools)


def iter_decoded_in_batches(
    paths: Sequence, decode_batch: Callable[[Sequence], list], batch_size: int
) -> Iterator[np.ndarray | ImageLoadError]:
    """Decode ``paths`` ``batch_size`` at a time by ``decode_batch``, one batch ahead on a thread."""
    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(1, thread_name_prefix="skimgfeat-decode") as pool:
        ahead: deque[Future] = deque()
        for start in starts:
            ahead.append(pool.submit(decode_batch, paths[start : start + batch_size]))
            if len(ahead) > 1:
                yield from ahead.popleft().result()
        while ahead:
            yield from ahead.popleft().result()


def _lower_decode_priority() -> None:
    """Run this decode thread at a lower scheduling priority than the model's thread.

    On a machine with as many decode threads as cores, the forward pass would otherwise
    get only its fair share of a core while it is the bottleneck; niced decoders take the
    cycles it leaves and yield the rest (and yield to other programs: polite on a laptop).
    The measured effect is in benchmarks/README.md. Per-thread niceness exists on Linux
    only; elsewhere a no-op.
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

    Calls may come from several threads at once: the runner changes no process-wide
    setting per batch. On the CPU an ONNX Runtime session runs with the threads it was
    created with (:func:`inference_layout`); the eager and TorchScript backends use
    torch's own process-wide setting (``torch.set_num_threads``), left to the caller.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        preprocessing: Preprocessing,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.module = module
        self.device = device
        self.preprocessing = preprocessing
        self.autocast_dtype = autocast_dtype
        self.max_batch: int | None = None
        self.memory_format = getattr(module, "input_memory_format", torch.channels_last)
        # Batches that may run at once: a module that sizes its own threads (an ONNX
        # Runtime session, one thread per call) runs one call per inference thread.
        concurrent = device.type == "cpu" and getattr(module, "supports_concurrent_calls", False)
        self.parallel_calls = inference_layout().parallel_calls if concurrent else 1

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
        with torch.inference_mode():
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
    pool: ThreadPoolExecutor | None = None,
) -> Iterator[EmbeddedBatch]:
    """Yield :class:`EmbeddedBatch` es covering ``paths`` in order.

    With ``on_error="raise"`` the first failing input (in input order) raises its
    ImageLoadError; otherwise its row is NaN and the error is reported in the batch.
    A batch made only of failures still yields its rows, without running the model.
    ``parallel_calls`` batches may be inferred at once (``run`` must be thread-safe
    then); they are still yielded in input order, on the process-wide inference pool
    (:func:`shared_pool`), so concurrent streams never multiply its threads.
    ``pool``: decode there (see :func:`iter_decoded`).
    """
    window = max(batch_size * 2, n_workers * 4)
    decode_batch = getattr(decode, "decode_batch", None)
    if decode_batch is not None:
        decoded = iter_decoded_in_batches(paths, decode_batch, batch_size)
    else:
        decoded = iter_decoded(paths, decode, n_workers, window, pool)
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
    pool = shared_pool("infer", parallel_calls)
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


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

    ``sched_getaffinity`` alone ignores container quotas: a pod limited to 2 CPUs on a
    64-core host would otherwise start 64 decoders.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup",
                     membership: str | os.PathLike = "/proc/self/cgroup") -> int | None:
    """The CPU quota of this process's cgroup, rounded up to whole CPUs; None without one.

    Reads cgroup v2 ``cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max 100000"``: none) or
    cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none), in the
    process's own cgroup and each parent (the tightest wins): a container usually sees
    its limit at the root of its cgroup namespace.
    """
    root = Path(root)
    try:
        lines = Path(membership).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one unified hierarchy
            limits += [_v2_limit(folder) for folder in _folder_and_parents(root, path)]
        elif "cpu" in controllers.split(","):
            mount = root / controllers
            limits += [_v1_limit(folder) for folder in _folder_and_parents(mount, path)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _folder_and_parents(mount: Path, path: str) -> list[Path]:
    folder = mount / path.strip("/")
    return [folder, *[parent for parent in folder.parents if mount in (parent, *parent.parents)]]


def _v2_limit(folder: Path) -> int | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _v1_limit(folder: Path) -> int | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))


def cpu_budget() -> int:
    """The threads one process's embedding may keep busy.

    ``SKIMGFEAT_NUM_THREADS`` when set (the caller's budget, e.g. cores per Dask worker);
    inside a ``dask.distributed`` worker, its thread count (``threads_per_worker``: the
    cores the cluster gave it); otherwise :func:`available_cpus`.
    """
    override = positive_int_from_env("SKIMGFEAT_NUM_THREADS")
    if override is not None:
        return override
    worker_threads = _dask_worker_threads()
    cpus = available_cpus()
    return min(cpus, worker_threads) if worker_threads else cpus


def _dask_worker_threads() -> int | None:
    if "distributed" not in sys.modules:
        return None  # never import dask just to find out
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def default_decode_workers() -> int:
    """Decode threads: the process's :func:`cpu_budget`."""
    return cpu_budget()


def default_inference_threads() -> int:
    """Intra-op threads for the forward pass on the CPU: half the budget, at least one.

    Decoding keeps the other half busy: intra-op parallelism costs extra core time
    (barriers, spinning) that decoding could use (measured in benchmarks/README.md).
    ``SKIMGFEAT_INFERENCE_THREADS`` overrides it.
    """
    override = positive_int_from_env("SKIMGFEAT_INFERENCE_THREADS")
    return override if override is not None else max(1, cpu_budget() // 2)


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
    override = positive_int_from_env("SKIMGFEAT_PARALLEL_BATCHES")
    parallel = override if override is not None else default_decode_workers()
    return InferenceLayout(1 if parallel > 1 else default_inference_threads(), parallel)


@contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for a block, then restore them.

    Process-wide: for one long fit-time job (fine-tuning), never per batch of a
    transform, which may run in several threads at once.
    """
    previous = torch.get_num_threads()
    if n_threads is None or n_threads == previous:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
