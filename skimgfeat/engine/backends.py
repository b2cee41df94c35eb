"""How the headless network is prepared for the device it runs on.

The canonical fitted network (``CNNImageEmbedder.model_``) always stays an eager
module on the CPU, so a pickle never holds device tensors or compiled graphs. What
runs is a copy prepared here, once per (device, backend) and kept out of pickles.

Backends:

* ``"eager"``: a channels-last copy of the module, run op by op by PyTorch.
* ``"torchscript"``: traced, frozen (weights become constants, batch norms folded into
  convolutions) and passed through ``optimize_for_inference``, which fuses
  convolution + ReLU for oneDNN. Faster than eager on the CPU (measured in
  ``benchmarks/README.md``); the float32 result differs from eager only by summation order.
* ``"onnxruntime"``: exported to ONNX (batch axis dynamic) by torch's
  ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``, which needs
  ``onnxscript``) and run by an ONNX Runtime CPU session with its graph optimisations.
  Faster again than the TorchScript graph (``benchmarks/README.md``), same float32
  results up to summation order. A network that exporter cannot capture is exported by
  the deprecated TorchScript-based exporter instead, with a warning naming the network,
  recorded in ``model_info_["runtime"]``.
* ``"auto"``: ``"onnxruntime"`` on the CPU in float32 (``"torchscript"`` when ONNX
  Runtime is not importable), ``"eager"`` elsewhere (cuDNN already fuses on CUDA, and
  a frozen graph would ignore autocast).

A backend that fails to prepare, or whose output does not match eager on a probe batch,
falls back to ``"eager"`` with a warning: a slower run, never a failed or wrong one.

What was prepared (backend, exporter, any fallback and why) is in the prepared
module's ``prepared_as`` dict, which the embedder records as ``model_info_["runtime"]``.

An exported ONNX graph that passed that check is kept in the artifact cache
(:mod:`skimgfeat.storage.artifact_cache`) under a digest of the network's parameters and
architecture, the input size, the opset and the library versions; later fits, clones
and unpickled copies of the same network load it instead of exporting and checking again.
A network with other weights but the same architecture starts from that architecture's
traced template (:mod:`skimgfeat.engine.onnx_export`) instead of tracing it again.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import warnings

import numpy as np
import torch
from torch import nn

from ..storage import artifact_cache
from .onnx_export import ONNX_OPSET, export_graph, graph_from_template, library_versions, tracing
from .threads import inference_layout

BACKENDS = ("auto", "eager", "torchscript", "onnxruntime")

# A prepared graph must agree with eager this closely on the probe batch; float32
# reordering gives > 0.99999, a broken graph gives far less.
_PROBE_MIN_COSINE = 0.9999
# Key of the exported graphs in the artifact cache: bumped with the exporter.
_EXPORT_SCHEME = "dynamo-2"


def resolve_backend(backend: str, device: torch.device, autocast: bool = False) -> str:
    """The concrete backend ``"auto"`` stands for on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if device.type != "cpu" or autocast:
        return "eager"
    return "onnxruntime" if _onnxruntime_available() else "torchscript"


def _onnxruntime_available() -> bool:
    # find_spec, not import: importing onnx costs a quarter of a second that a cached graph does not need.
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def prepare_module(
    module: nn.Module,
    device: torch.device,
    backend: str,
    *,
    input_size: int = 224,
    autocast: bool = False,
) -> nn.Module:
    """A copy of ``module`` ready for inference on ``device``.

    ``input_size`` is the side of the square images the module will receive (traced
    graphs are specialised to it); ``autocast`` says the runner will use autocast, which
    only eager modules honour.
    """
    concrete = resolve_backend(backend, device, autocast)
    if concrete != "onnxruntime":
        return _prepare(module, device, concrete, input_size, graph_key=None)
    graph_key = onnx_graph_key(module, input_size)
    # Processes preparing the same network at once export it once; the others read its graph.
    with artifact_cache.computing("onnx", graph_key):
        cached = _load_onnx_graph(graph_key)
        if cached is not None:
            return cached
        return _prepare(module, device, concrete, input_size, graph_key)


def _prepare(module: nn.Module, device: torch.device, concrete: str, input_size: int,
             graph_key: str | None) -> nn.Module:
    """``module`` prepared for the ``concrete`` backend (stored under ``graph_key``), or eager with a warning."""
    eager = _prepare_eager(module, device)
    eager.prepared_as = {"backend": "eager"}
    if concrete == "eager":
        return eager
    # torch.jit (and the TorchScript-based ONNX exporter, used only as a fallback) are
    # marked deprecated. Their warnings go to the caller's filters: silencing them with
    # warnings.catch_warnings() would swap the process-wide filter list, which is not
    # thread-safe before Python 3.14 (another thread's filters would be lost).
    try:
        example = _example_batch(device, input_size)
        prepared = _PREPARERS[concrete](eager, example)  # checked against eager
        if graph_key is not None:
            artifact_cache.store("onnx", graph_key, _tagged(prepared.graph, prepared.prepared_as))
    except Exception as error:  # noqa: BLE001 - any preparation failure: run eager instead
        reason = f"{type(error).__name__}: {error}"
        warnings.warn(f"backend {concrete!r} could not be prepared ({reason}); using 'eager'", RuntimeWarning,
                      stacklevel=3)
        eager.prepared_as = {"backend": "eager", "fallback_from": concrete, "reason": reason}
        return eager
    return prepared


def _prepare_eager(module: nn.Module, device: torch.device) -> nn.Module:
    prepared = copy.deepcopy(module).to(device)
    # NHWC is what oneDNN and cuDNN's tensor-core kernels want, and what our uint8
    # batches already are after the permute in Preprocessing.normalize.
    return prepared.to(memory_format=torch.channels_last).eval()


def _example_batch(device: torch.device, input_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(2, 3, input_size, input_size, generator=generator)
    return batch.to(device).contiguous(memory_format=torch.channels_last)


def _prepare_torchscript(eager: nn.Module, example: torch.Tensor) -> nn.Module:
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(eager, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        prepared = torch.jit.optimize_for_inference(frozen)
    prepared.prepared_as = {"backend": "torchscript"}
    _check_matches(prepared, eager, example)
    return prepared


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime CPU session behind the ``module(batch) -> features`` interface."""

    # ONNX graphs take NCHW; a contiguous batch goes to the session without a copy.
    input_memory_format = torch.contiguous_format

    # One session serves concurrent run() calls from several threads (ONNX Runtime
    # documents Run as thread-safe), so the engine may infer several batches at once.
    supports_concurrent_calls = True

    def __init__(self, onnx_model: bytes, n_threads: int, prepared_as: dict | None = None) -> None:
        super().__init__()
        import onnxruntime

        self.graph = onnx_model
        self.prepared_as = {"backend": "onnxruntime", **(prepared_as or {})}

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: pixels})[0])


def onnx_graph_key(module: nn.Module, input_size: int) -> str:
    """The artifact-cache name of ``module``'s exported graph: everything the export depends on.

    The parameters are hashed here rather than taken from ``model_info_``, so a network
    whose weights were changed after fit never meets the graph of its former self.
    """
    return artifact_cache.digest(
        "onnx-export", _EXPORT_SCHEME, artifact_cache.parameters_sha256(module), repr(module), str(input_size),
        str(ONNX_OPSET), *library_versions(),
    )


def _tagged(graph: bytes, prepared_as: dict) -> bytes:
    """An artifact-cache entry: how the graph was exported (one JSON line), then the graph."""
    return json.dumps(prepared_as).encode("utf-8") + b"\n" + graph


def _load_onnx_graph(key: str) -> OnnxRuntimeModule | None:
    entry = artifact_cache.load("onnx", key)
    if entry is None:
        return None
    try:
        header, graph = entry.split(b"\n", 1)
        return OnnxRuntimeModule(graph, onnx_session_threads(), json.loads(header))  # as exported, then
    except Exception:  # noqa: BLE001 - an entry ONNX Runtime refuses is a miss: export again
        return None


def onnx_session_threads() -> int:
    """Intra-op threads of one ONNX Runtime session: see :func:`skimgfeat.engine.threads.inference_layout`."""
    return inference_layout().threads_per_call


def _prepare_onnxruntime(eager: nn.Module, example: torch.Tensor) -> nn.Module:
    """The graph from the architecture's template when one fits and agrees with eager, else a fresh export."""
    # One trace of an architecture at a time on this machine: the others fill its template.
    with tracing(eager, example):
        graph = graph_from_template(eager, example)
        if graph is not None:
            prepared = OnnxRuntimeModule(graph, onnx_session_threads(), {"exporter": "torch.export"})
            with contextlib.suppress(RuntimeError):  # disagrees with eager: export afresh
                _check_matches(prepared, eager, example)
                return prepared
        graph, prepared_as = export_graph(eager, example)
    prepared = OnnxRuntimeModule(graph, onnx_session_threads(), prepared_as)
    _check_matches(prepared, eager, example)
    return prepared


_PREPARERS = {"torchscript": _prepare_torchscript, "onnxruntime": _prepare_onnxruntime}


def _check_matches(prepared: nn.Module, eager: nn.Module, example: torch.Tensor) -> None:
    with torch.inference_mode():
        # Two calls: the first runs the profiling executor's specialisation, the second
        # the optimised graph that every later batch will use.
        prepared(example)
        got = prepared(example).float().flatten(1)
        expected = eager(example).float().flatten(1)
    if got.shape != expected.shape:
        raise RuntimeError(f"output shape {tuple(got.shape)} differs from eager {tuple(expected.shape)}")
    if torch.allclose(got, expected, rtol=1e-4, atol=1e-6):
        return
    # float64 with a negligible eps: randomly initialised deep networks emit features
    # around 1e-13, where float32's default eps would call every direction different.
    cosine = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=1, eps=1e-300)
    if not cosine.min().item() >= _PROBE_MIN_COSINE:
        raise RuntimeError(f"output differs from eager (cosine {cosine.min().item():.6f})")
