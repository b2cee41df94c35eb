"""Fast backends agree with the eager torchvision reference; the runner survives CUDA OOM.

Speed is measured by benchmarks/throughput.py, never asserted here.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.base import clone
from torch import nn
from torchvision import transforms

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.backends import BACKENDS, OnnxRuntimeModule, prepare_module, resolve_backend
from skimgfeat.engine.decoding import iter_decoded
from skimgfeat.engine.inference import ModelRunner
from skimgfeat.engine.preprocessing import Preprocessing
from skimgfeat.engine.threads import DECODE_NICENESS, default_inference_threads
from skimgfeat.storage import artifact_cache
from skimgfeat.storage.artifact_cache import CACHE_DIR_ENV

MIN_COSINE = 0.9999
FAST_BACKENDS = [b for b in BACKENDS if b not in ("eager",)]
CPU = torch.device("cpu")


def reference_features(model: nn.Module, paths) -> np.ndarray:
    """The straightforward pipeline: PIL + torchvision transforms + eager float32 forward."""
    transform = transforms.Compose(
        [
            transforms.Resize((256, 256)),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.eval()(batch).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def headless(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None)
    setattr(model, "classifier" if hasattr(model, "classifier") else "fc", nn.Identity())  # as the registry does
    return model.eval()


def embedder_with(model: nn.Module, name: str, backend: str) -> CNNImageEmbedder:
    embedder = CNNImageEmbedder(name, weights=None, backend=backend, device="cpu").fit()
    embedder.model_.load_state_dict(model.state_dict())
    return embedder


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x1_0"])  # x0_5's random features are ~1e-7
def test_fast_backend_matches_eager_torchvision(name, backend, synthetic_photos):
    model = headless(name)
    expected = reference_features(model, synthetic_photos)
    embedder = embedder_with(model, name, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        got = embedder.transform(synthetic_photos)
    assert got.shape == expected.shape
    assert cosines(got, expected).min() >= MIN_COSINE


@pytest.mark.shared
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_weights_on_real_photos(backend, shared_weights, imagenet_dir):
    paths = sorted(imagenet_dir.glob("*.JPEG"))[:24]
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(shared_weights, map_location="cpu"))
    model.classifier = nn.Flatten(1)
    expected = reference_features(model, paths)
    got = CNNImageEmbedder(weights=str(shared_weights), backend=backend, device="cpu").fit().transform(paths)
    assert cosines(got, expected).min() >= MIN_COSINE


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18", "efficientnet_b0"])
def test_fused_backends_on_other_registry_models(name, backend):
    model = headless(name)
    batch = torch.randn(3, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        prepared = prepare_module(model, CPU, backend)
    assert isinstance(prepared, torch.jit.ScriptModule if backend == "torchscript" else OnnxRuntimeModule)
    with torch.inference_mode():
        got, expected = prepared(batch).numpy(), model(batch).numpy()
    assert cosines(got, expected).min() >= MIN_COSINE


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_prepared_module_handles_any_batch_size(backend, traced_templates):
    model = headless("shufflenet_v2_x0_5")
    prepared = prepare_module(model, CPU, backend)
    for size in (1, 5, 33):
        batch = torch.randn(size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            assert cosines(prepared(batch).numpy(), model(batch).numpy()).min() >= MIN_COSINE


def test_auto_is_onnxruntime_on_cpu_and_eager_elsewhere():
    assert resolve_backend("auto", CPU) == "onnxruntime"
    assert resolve_backend("auto", CPU, autocast=True) == "eager"  # frozen graphs ignore autocast
    assert resolve_backend("auto", torch.device("cuda")) == "eager"
    assert resolve_backend("eager", CPU) == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt", CPU)


def test_preparation_failure_falls_back_to_eager_with_a_warning():
    class Untraceable(nn.Module):
        def forward(self, x):
            if torch.jit.is_tracing():
                raise RuntimeError("cannot be traced")
            return x.flatten(1)

    with pytest.warns(RuntimeWarning, match="using 'eager'"):
        prepared = prepare_module(Untraceable(), CPU, "torchscript")
    assert not isinstance(prepared, torch.jit.ScriptModule)
    batch = torch.randn(2, 3, 8, 8)
    assert torch.equal(prepared(batch), Untraceable()(batch))


def test_onnx_export_uses_the_torch_export_based_exporter(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))  # export now, not read back
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_module(small_convnet(0), CPU, "onnxruntime", input_size=32)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]  # the TorchScript exporter warns
    assert prepared.prepared_as == {"backend": "onnxruntime", "exporter": "torch.export"}
    (entry,) = (tmp_path / "onnx").iterdir()
    written = entry.stat().st_mtime_ns
    again = prepare_module(small_convnet(0), CPU, "onnxruntime", input_size=32)
    assert entry.stat().st_mtime_ns == written  # exported once per machine, then read back
    assert again.prepared_as == prepared.prepared_as  # with how it was exported


def test_an_embedder_records_how_its_graph_was_exported(artifact_folder):
    embedder = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu",
                                backend="onnxruntime").fit().prepare()
    assert embedder.model_info_["runtime"] == {"device": "cpu", "backend": "onnxruntime", "exporter": "torch.export"}
    again = clone(embedder).fit().prepare()
    assert again.model_info_["runtime"] == embedder.model_info_["runtime"]


def small_convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(1))
    layers[1].running_mean.normal_()  # batch norms with statistics of their own, as trained ones have
    return layers.eval()


def test_other_weights_of_an_exported_architecture_reuse_its_trace(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    first = prepare_module(small_convnet(0), CPU, "onnxruntime", input_size=32)
    (template,) = (tmp_path / "onnx-template").iterdir()
    traced_at = template.stat().st_mtime_ns

    second_net = small_convnet(1)
    second = prepare_module(second_net, CPU, "onnxruntime", input_size=32)
    assert template.stat().st_mtime_ns == traced_at  # not traced again
    assert len(list((tmp_path / "onnx").iterdir())) == 2  # each network's own optimised graph
    assert second.prepared_as == first.prepared_as == {"backend": "onnxruntime", "exporter": "torch.export"}
    batch = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(second(batch), second_net(batch))  # its own weights, not the first's
        assert not torch.allclose(first(batch), second(batch))


def test_a_damaged_template_is_traced_again(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    prepare_module(small_convnet(0), CPU, "onnxruntime", input_size=32)
    (template,) = (tmp_path / "onnx-template").iterdir()
    template.write_bytes(template.read_bytes()[:-10])  # damaged: a miss, traced again
    second_net = small_convnet(1)
    second = prepare_module(second_net, CPU, "onnxruntime", input_size=32)
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(second(batch), second_net(batch))
    assert artifact_cache.load("onnx-template", template.name) is not None  # written anew, whole


def test_a_network_torch_export_cannot_capture_falls_back_to_the_older_exporter_naming_it():
    class DataDependent(nn.Module):
        def forward(self, x):
            rows = x.flatten(1)
            step = int(rows.abs().sum(1).max().item() > 0) + 1  # a Python number read from the data
            return rows[:, ::step]

    with pytest.warns(RuntimeWarning, match="DataDependent cannot be exported to ONNX by torch.export"):
        prepared = prepare_module(DataDependent(), CPU, "onnxruntime", input_size=8)
    assert prepared.prepared_as["exporter"] == "torchscript"
    assert prepared.prepared_as["fallback_from"] == "torch.export"
    batch = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(prepared(batch), DataDependent()(batch))


def test_prepared_module_is_a_copy(traced_templates):
    model = headless("shufflenet_v2_x0_5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_module(model, CPU, "auto")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).is_contiguous()  # the canonical module stays as it was


def test_pickled_embedder_rebuilds_its_backend(synthetic_photos, traced_templates):
    import pickle

    embedder = CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu").fit()
    first = embedder.transform(synthetic_photos)
    runner = embedder._runner()
    clone = pickle.loads(pickle.dumps(embedder))
    assert getattr(clone, "_runtime", None) is None
    assert embedder._runner() is runner  # pickling (joblib, Dask) leaves the live estimator prepared
    np.testing.assert_allclose(clone.transform(synthetic_photos), first, rtol=1e-5, atol=1e-6)


class OutOfMemoryAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches above ``limit``; else a per-image sum."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return x.flatten(1).sum(1, keepdim=True)


def test_out_of_memory_halves_the_batch_and_carries_on():
    module = OutOfMemoryAbove(limit=5)
    runner = ModelRunner(module, CPU, Preprocessing(crop=4, resize=4))
    pixels = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
    out = runner(pixels)
    expected = Preprocessing(crop=4, resize=4).normalize(torch.from_numpy(pixels)).flatten(1).sum(1)
    np.testing.assert_allclose(out[:, 0], expected.numpy(), rtol=1e-5)
    assert runner.max_batch == 4
    module.sizes.clear()
    runner(pixels)  # later batches start at the smaller size: no failed attempt
    assert module.sizes == [4, 4, 4, 4]


def test_out_of_memory_with_a_single_image_is_raised():
    runner = ModelRunner(OutOfMemoryAbove(limit=0), CPU, Preprocessing(crop=4, resize=4))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        runner(np.zeros((2, 4, 4, 3), dtype=np.uint8))


def test_the_runner_leaves_torch_thread_setting_alone(monkeypatch):
    """torch.set_num_threads is process-wide: flipping it per batch would race with other threads."""
    before = torch.get_num_threads()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x.flatten(1)

    runner = ModelRunner(Probe(), CPU, Preprocessing(crop=4, resize=4))
    runner(np.zeros((2, 4, 4, 3), dtype=np.uint8))
    assert seen == [before]
    assert torch.get_num_threads() == before
    monkeypatch.setenv("SKIMGFEAT_INFERENCE_THREADS", "3")
    assert default_inference_threads() == 3


def _priorities_seen_by_decoders(n_paths: int = 8) -> set[int]:
    def decode(path):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    return set(iter_decoded(range(n_paths), decode, n_workers=2, window=4))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux only")
def test_decode_threads_yield_to_the_model_thread(monkeypatch):
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert _priorities_seen_by_decoders() == {min(19, own + DECODE_NICENESS)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller keeps its priority
    monkeypatch.setenv("SKIMGFEAT_DECODE_NICENESS", "0")
    assert _priorities_seen_by_decoders() == {own}
