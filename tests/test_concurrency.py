"""One fitted embedder shared by threads and by Dask: the serial result, no shared state disturbed."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.threads import available_cpus, cgroup_cpu_limit, cpu_budget, live_pools


def _embedder() -> CNNImageEmbedder:
    return CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, on_error="nan", batch_size=2)


@pytest.fixture
def listing(synthetic_photos, tmp_path) -> list[str]:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    return [str(p) for p in synthetic_photos[:3]] + [str(empty)] + [str(p) for p in synthetic_photos[3:]]


def _pool_threads() -> dict[str, int]:
    names = [thread.name for thread in threading.enumerate()]
    return {kind: sum(name.startswith(f"skimgfeat-{kind}") for name in names) for kind in ("decode", "infer")}


def test_four_threads_sharing_one_unprepared_embedder_get_the_serial_result(listing):
    serial = _embedder().fit()
    expected = serial.transform(listing)
    expected_errors = [(e.path, e.reason) for e in serial.errors_]

    shared = _embedder().fit()  # not prepared: the four threads race to prepare it
    start = threading.Barrier(4)
    results: dict[int, tuple] = {}
    most = {"decode": 0, "infer": 0}

    def work(k: int) -> None:
        start.wait()
        for _ in range(3):
            rows = list(reversed(listing)) if k % 2 else listing  # each thread its own order
            errors = [(e.path, e.reason) for batch in shared.iter_transform(rows) for _, e in batch.errors]
            features = shared.transform(rows)
            results.setdefault(k, []).append((rows, features, errors))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most = {kind: max(most[kind], count) for kind, count in _pool_threads().items()}
        time.sleep(0.01)

    assert sorted(results) == [0, 1, 2, 3]
    for runs in results.values():
        for rows, features, errors in runs:
            order = [listing.index(path) for path in rows]
            np.testing.assert_array_equal(features, expected[order])
            assert sorted(errors) == sorted(expected_errors)  # each call sees its own failures only
    assert [(e.path, e.reason) for e in shared.errors_] == expected_errors  # the last call's, not a mix
    # One process-wide decode pool and one inference pool, however many calls run at once.
    assert most["decode"] <= cpu_budget() and most["infer"] <= cpu_budget()


def test_prepare_builds_the_runtime_once_ahead_of_the_first_transform(listing):
    embedder = _embedder().fit()
    assert embedder.prepare() is embedder
    runtime = embedder._runtime.runner
    embedder.prepare()
    embedder.transform(listing[:2])
    assert embedder._runtime.runner is runtime


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_preparing_leaves_the_process_warning_filters_alone(backend, listing):
    """warnings.catch_warnings() swaps the process-wide filter list; a filter another thread
    adds meanwhile would vanish when it is restored."""
    embedder = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, backend=backend).fit()
    with warnings.catch_warnings():
        before = list(warnings.filters)
        preparing = threading.Thread(target=embedder.prepare)
        preparing.start()
        time.sleep(0.2)  # the other thread is exporting the network now
        warnings.filterwarnings("ignore", message="added by another thread while preparing")
        added = list(warnings.filters)
        preparing.join()
        embedder.transform(listing[:2])
        assert warnings.filters == added
        assert added[1:] == before


def test_dask_threaded_scheduler_gives_the_local_table(listing):
    dd = pytest.importorskip("dask.dataframe", reason="dask is a test extra: pip install -e '.[test]'")
    from skimgfeat.distributed import embed_partitions

    embedder = _embedder().fit()
    series = pd.Series(listing, index=[f"lot-{i}" for i in range(len(listing))])
    lazy = embed_partitions(dd.from_pandas(series, npartitions=4), embedder)
    local = lazy.compute(scheduler="sync")
    threaded = lazy.compute(scheduler="threads", num_workers=4)
    pd.testing.assert_frame_equal(threaded, local)
    np.testing.assert_allclose(local.drop(columns="error").to_numpy(), embedder.transform(listing), rtol=1e-5,
                               atol=1e-6, equal_nan=True)


def test_dask_distributed_local_cluster_gives_the_local_table(listing):
    dd = pytest.importorskip("dask.dataframe", reason="dask is a test extra: pip install -e '.[test]'")
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is a test extra")
    from skimgfeat.distributed import embed_partitions

    embedder = _embedder().fit()
    series = pd.Series(listing, index=[f"lot-{i}" for i in range(len(listing))])
    lazy = embed_partitions(dd.from_pandas(series, npartitions=4), embedder)
    local = lazy.compute(scheduler="sync")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_cluster = client.compute(lazy).result()
    pd.testing.assert_frame_equal(on_cluster, local)


# -- how many threads: the CPUs this process may really use ------------------------------


def _cgroup(tmp_path, membership: str, files: dict[str, str]):
    for relative, text in files.items():
        path = tmp_path / "fs" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "cgroup").write_text(membership)
    return tmp_path / "fs", tmp_path / "cgroup"


def test_a_cgroup_v2_quota_caps_the_cpus(tmp_path):
    root, membership = _cgroup(tmp_path, "0::/pod/app\n", {"cpu.max": "max 100000\n",
                                                           "pod/cpu.max": "250000 100000\n",
                                                           "pod/app/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, membership) == 3  # 2.5 CPUs of quota: three threads can use them


def test_a_cgroup_v1_cfs_quota_caps_the_cpus(tmp_path):
    root, membership = _cgroup(tmp_path, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
                               {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
                                "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, membership) == 2


def test_no_quota_means_no_cap(tmp_path):
    root, membership = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, membership) is None
    v1_root, v1_membership = _cgroup(tmp_path / "v1", "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n",
                                                                     "cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(v1_root, v1_membership) is None
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent.txt") is None


def test_the_caller_budget_overrides_the_cpu_count(monkeypatch):
    assert 1 <= cpu_budget() <= available_cpus()
    monkeypatch.setenv("SKIMGFEAT_NUM_THREADS", "1")
    assert cpu_budget() == 1


def test_a_caller_with_another_thread_budget_never_shuts_down_a_pool_in_use(synthetic_photos, monkeypatch):
    """A client thread and an in-process LocalCluster worker get different budgets in one process."""
    embedder = _embedder().fit()
    paths = [str(p) for p in synthetic_photos] * 3  # more than the decode window: work is still being queued
    expected = embedder.transform(paths)
    monkeypatch.setenv("SKIMGFEAT_NUM_THREADS", "2")
    stream = embedder.iter_transform(paths)
    batches = [next(stream)]
    monkeypatch.setenv("SKIMGFEAT_NUM_THREADS", "3")
    embedder.transform(synthetic_photos)  # another caller, another pool size, while the stream is open
    batches += list(stream)
    np.testing.assert_array_equal(np.concatenate([batch.features for batch in batches]), expected)
    assert {size for kind, size in live_pools() if kind == "decode"} == {3}  # the other size went with its last user
