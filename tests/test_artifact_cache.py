"""What one fit prepares is reused by later fits, clones and unpickled copies, never stale."""

from __future__ import annotations

import os
import pickle
import textwrap

import numpy as np
import pytest
import torch
from _launcher import start_python
from sklearn.base import clone

from skimgfeat import CNNImageEmbedder
from skimgfeat.storage import artifact_cache
from skimgfeat.storage.artifact_cache import CACHE_DIR_ENV


def onnx_entries(folder):
    return sorted((folder / "onnx").glob("*")) if (folder / "onnx").exists() else []


def test_the_exported_graph_is_reused_by_refits_clones_and_unpickled_copies(artifact_folder, synthetic_photos):
    first = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu").fit()
    expected = first.transform(synthetic_photos)
    (entry,) = onnx_entries(artifact_folder)
    written = entry.stat().st_mtime_ns

    for again in (clone(first).fit(), pickle.loads(pickle.dumps(first)), first.fit()):
        np.testing.assert_array_equal(again.transform(synthetic_photos), expected)
    assert onnx_entries(artifact_folder) == [entry]
    assert entry.stat().st_mtime_ns == written  # read, never exported and written again


def test_weights_changed_after_fit_never_meet_the_graph_of_the_old_ones(artifact_folder, synthetic_photos):
    original = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu").fit()
    before = original.transform(synthetic_photos)
    changed = clone(original).fit()
    with torch.no_grad():
        for parameter in changed.model_.parameters():
            parameter.mul_(0.5)
    after = changed.transform(synthetic_photos)
    eager = clone(changed).set_params(backend="eager").fit()
    eager.model_.load_state_dict(changed.model_.state_dict())
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, eager.transform(synthetic_photos), rtol=1e-3, atol=1e-6)
    assert len(onnx_entries(artifact_folder)) == 2


def test_a_damaged_entry_is_a_miss_and_is_replaced(artifact_folder, synthetic_photos):
    embedder = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu").fit()
    expected = embedder.transform(synthetic_photos)
    (entry,) = onnx_entries(artifact_folder)
    damaged = bytearray(entry.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    entry.write_bytes(bytes(damaged))

    np.testing.assert_array_equal(clone(embedder).fit().transform(synthetic_photos), expected)
    key = entry.name
    assert artifact_cache.load("onnx", key) is not None  # rewritten whole


def test_weights_file_digest_is_cached_per_file_version(artifact_folder, tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 1000)
    digest_a = artifact_cache.file_sha256(weights)
    assert artifact_cache.file_sha256(weights) == digest_a
    assert len(list((artifact_folder / "file-sha256").iterdir())) == 1

    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)  # same size, mtime put back: only the change time tells
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert artifact_cache.file_sha256(weights) != digest_a


def test_an_unwritable_or_disabled_cache_costs_nothing_but_time(tmp_path, monkeypatch, synthetic_photos):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    # resnet18: the network with the fewest operations to trace, traced twice here
    unwritable = CNNImageEmbedder("resnet18", weights=None, random_state=0, device="cpu", resize_size=64,
                                  crop_size=56).fit()
    monkeypatch.setenv(CACHE_DIR_ENV, "off")
    assert artifact_cache.cache_dir() is None
    disabled = clone(unwritable).fit()
    np.testing.assert_array_equal(unwritable.transform(synthetic_photos), disabled.transform(synthetic_photos))


_PREPARE_TOGETHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from skimgfeat.engine import backends

    ready, seed = Path(sys.argv[1]), int(sys.argv[2])
    exports = []
    export_graph = backends.export_graph
    backends.export_graph = lambda *args: exports.append(1) or export_graph(*args)  # counts the real exports
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).eval()
    Path(ready, str(len(list(ready.iterdir())))).touch()
    while len(list(ready.iterdir())) < 2:  # prepare together
        time.sleep(0.01)
    prepared = backends.prepare_module(network, torch.device("cpu"), "onnxruntime", input_size=32)
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(prepared(batch), network(batch))
    print(len(exports))
    """
)


@pytest.mark.parametrize(("seeds", "what"), [((0, 0), "the same network"), ((0, 1), "two weights of one architecture")])
def test_processes_preparing_at_once_export_once(seeds, what, tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, CACHE_DIR_ENV: str(tmp_path / "artifacts")}
    runs = [start_python(_PREPARE_TOGETHER, ready, seed, env=env) for seed in seeds]
    results = [run.completed() for run in runs if run.wait(300) is not None]
    assert [result.returncode for result in results] == [0, 0], [result.stderr for result in results]
    assert sum(int(result.stdout) for result in results) == 1, what  # the other waited, then read or filled
    assert not list((tmp_path / "artifacts").rglob("*.lock"))  # no lock file outlives its holder
