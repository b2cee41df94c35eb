"""A network's ONNX graph, traced once per architecture.

torch's ``torch.export``-based exporter spends seconds tracing a network with symbolic
shapes, and none of that work depends on the weights. So the first export of an
architecture keeps its graph *before optimisation*, weights stripped, in the artifact
cache as a template. A later network of the same architecture (another fine-tune,
other pretrained or random weights) gets its graph by writing its own tensors into the
template's initializers, which the exporter names after ``state_dict`` keys, and running
the optimisation passes the exporter itself runs (:meth:`torch.onnx.ONNXProgram.optimize`).

A template only saves time: it is refused when a tensor's name, shape or dtype does not
fit, and the caller still checks the resulting graph against eager, exporting afresh
when it disagrees.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import re
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..storage import artifact_cache

ONNX_OPSET = 18  # the torch.export-based exporter's own default
# Bumped whenever what a template holds, or how it is filled, changes.
_TEMPLATE_SCHEME = "template-1"
_TEMPLATE_KIND = "onnx-template"


def library_versions() -> list[str]:
    """The versions an exported graph depends on: part of every graph's cache key."""
    return [torch.__version__, *(_version(name) for name in ("onnx", "onnxruntime", "onnxscript"))]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def graph_from_template(eager: nn.Module, example: torch.Tensor) -> bytes | None:
    """``eager``'s optimised graph from its architecture's template, or None when there is none that fits."""
    template = artifact_cache.load(_TEMPLATE_KIND, _template_key(eager, example))
    if template is None:
        return None
    try:
        return _optimized(_filled(template, _named_tensors(eager)))
    except (KeyError, ValueError):
        return None


def tracing(eager: nn.Module, example: torch.Tensor) -> contextlib.AbstractContextManager:
    """Hold the lock of ``eager``'s architecture template while it is read, or traced and stored."""
    return artifact_cache.computing(_TEMPLATE_KIND, _template_key(eager, example))


def export_graph(eager: nn.Module, example: torch.Tensor) -> tuple[bytes, dict]:
    """Export ``eager`` (optimised ONNX bytes, and how) and keep its architecture's template.

    The ``torch.export``-based exporter first; the deprecated TorchScript-based one only
    for a network it cannot capture, with a warning naming the network and the reason.
    """
    try:
        program = _export(_export_dynamo, eager, example)
    except Exception as error:  # noqa: BLE001 - any capture failure: the older exporter may still work
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split("\n")[0]  # no terminal colours
        reason = f"{type(error).__name__}: {first_line}"
        warnings.warn(
            f"{type(eager).__name__} cannot be exported to ONNX by torch.export ({reason}); exporting it with the "
            "deprecated TorchScript-based exporter instead",
            RuntimeWarning,
            stacklevel=6,
        )
        graph = _export(_export_torchscript, eager, example)
        return graph, {"exporter": "torchscript", "fallback_from": "torch.export", "reason": reason}
    artifact_cache.store(_TEMPLATE_KIND, _template_key(eager, example), _stripped(program.model_proto))
    program.optimize()
    return program.model_proto.SerializeToString(), {"exporter": "torch.export"}


def _template_key(eager: nn.Module, example: torch.Tensor) -> str:
    """Everything a graph traced from ``eager`` depends on, except the tensors' values."""
    layout = [f"{name}:{tuple(tensor.shape)}:{tensor.dtype}" for name, tensor in _named_tensors(eager).items()]
    return artifact_cache.digest(
        _TEMPLATE_KIND, _TEMPLATE_SCHEME, repr(eager), str(tuple(example.shape)), str(ONNX_OPSET),
        *library_versions(), *layout,
    )


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # named_buffers includes non-persistent buffers (masks, position indices): the exporter
    # lifts them into initializers under the same names.
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _stripped(proto) -> bytes:
    """The graph with each initializer's values removed (names, dtypes and shapes kept)."""
    import onnx

    for initializer in proto.graph.initializer:
        initializer.CopyFrom(
            onnx.TensorProto(name=initializer.name, data_type=initializer.data_type, dims=initializer.dims)
        )
    return proto.SerializeToString()


def _filled(template: bytes, tensors: dict[str, torch.Tensor]):
    """The template with ``tensors`` written into its initializers; KeyError/ValueError when they do not fit."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.ParseFromString(template)
    for initializer in proto.graph.initializer:
        values = tensors[initializer.name].detach().cpu().numpy()
        filled = numpy_helper.from_array(values, initializer.name)
        if filled.data_type != initializer.data_type or tuple(filled.dims) != tuple(initializer.dims):
            raise ValueError(f"initializer {initializer.name} does not fit the template")
        initializer.CopyFrom(filled)
    return proto


def _optimized(proto) -> bytes:
    import onnx_ir

    program = torch.onnx.ONNXProgram(onnx_ir.from_proto(proto), None)
    program.optimize()
    return program.model_proto.SerializeToString()


def _export(exporter: Callable, eager: nn.Module, example: torch.Tensor):
    with torch.inference_mode(False), torch.no_grad(), _without_attention_fastpath():
        return exporter(eager, example.contiguous())


def _export_dynamo(eager: nn.Module, example: torch.Tensor) -> torch.onnx.ONNXProgram:
    return torch.onnx.export(
        eager,
        (example,),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=["images"],
        output_names=["features"],
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        optimize=False,  # optimised after the template is kept
        verify=False,
        report=False,
        verbose=False,
    )


def _export_torchscript(eager: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        eager,
        example,
        buffer,
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=["images"],
        output_names=["features"],
        dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
    )
    return buffer.getvalue()


@contextlib.contextmanager
def _without_attention_fastpath() -> Iterator[None]:
    """Trace ``nn.MultiheadAttention`` as plain ops: its inference fast path (one fused
    native op, taken by OpenCLIP's towers) has no ONNX export."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
