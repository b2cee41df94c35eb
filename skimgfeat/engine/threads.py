"""How many threads the engine may keep busy, and the process-wide pools they run in.

The budget (:func:`cpu_budget`) follows the CPUs this process may really use: its
affinity mask, a cgroup CPU quota, a ``dask.distributed`` worker's thread count, or
``SKIMGFEAT_NUM_THREADS``. Decoding and concurrent inference run in process-wide pools
(:func:`leased_pool`), so several calls at once never multiply threads. A pool is
leased, not owned: two callers that get different budgets (a client thread and an
in-process ``LocalCluster`` worker) each get a pool of their size, and a pool is shut
down only once no stream uses it any more.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .environment import positive_int_from_env

# How much nicer than the model's thread decode threads run (0: same priority).
DECODE_NICENESS = 10


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


def _decode_pool(n_workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n_workers, thread_name_prefix="skimgfeat-decode", initializer=_lower_decode_priority)


def _infer_pool(n_workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n_workers, thread_name_prefix="skimgfeat-infer")


POOL_KINDS = {"decode": _decode_pool, "infer": _infer_pool}


class _Pools:
    """The process's pools by (kind, size), each with the number of streams using it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple[str, int], list] = {}  # (kind, size) -> [pool, users]
        self.latest: dict[str, int] = {}  # the size last asked for, kept warm when idle


_pools = _Pools()


@contextmanager
def leased_pool(kind: str, n_workers: int) -> Iterator[ThreadPoolExecutor]:
    """The process-wide ``"decode"`` or ``"infer"`` pool of ``n_workers`` threads, for a block.

    Every stream leases these, so four threads transforming at once share ``n_workers``
    threads instead of starting four times as many. A caller with another budget gets
    a pool of its own size; a pool of a size nobody asks for any more is shut down when
    its last user leaves (never under a stream still using it), the last size asked for
    stays warm for the next call.
    """
    key = (kind, n_workers)
    pools = _pools
    with pools.lock:
        pools.latest[kind] = n_workers
        entry = pools.entries.get(key)
        if entry is None:
            entry = pools.entries[key] = [POOL_KINDS[kind](n_workers), 0]
        entry[1] += 1
        _retire_idle(pools, kind)
    try:
        yield entry[0]
    finally:
        with pools.lock:
            entry[1] -= 1
            _retire_idle(pools, kind)


def _retire_idle(pools: _Pools, kind: str) -> None:
    for key, (pool, users) in list(pools.entries.items()):
        if key[0] == kind and users == 0 and key[1] != pools.latest.get(kind):
            del pools.entries[key]
            pool.shutdown(wait=False)


def live_pools() -> dict[tuple[str, int], int]:
    """How many streams use each live pool, by (kind, size): for tests and diagnostics."""
    with _pools.lock:
        return {key: users for key, (_, users) in _pools.entries.items()}


def _forget_pools() -> None:
    """In a forked child the parent's pool threads do not exist: start new pools there."""
    global _pools
    _pools = _Pools()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


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


@contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
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
