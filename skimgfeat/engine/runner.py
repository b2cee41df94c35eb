"""The prepared network of a fitted embedder: device, backend, precision, built once.

A fitted embedder keeps its canonical network as an eager CPU module; what runs is a
:class:`~skimgfeat.engine.inference.ModelRunner` around a copy prepared here for the
device, backend and precision (:func:`skimgfeat.engine.backends.prepare_module`, or the
calibrated int8 graph). :class:`PreparedRunner` builds it once, under a lock, however
many threads ask at the same time, and is left out of pickles (device copies and
compiled graphs are rebuilt on load).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .backends import OnnxRuntimeModule, onnx_session_threads, prepare_module
from .inference import ModelRunner
from .preprocessing import Preprocessing

# Autocast dtype of each precision; "int8" runs a quantised ONNX graph instead (skimgfeat.engine.quantization).
PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": None}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU; anything else must be usable here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device=None or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available")
    return resolved


def device_here(device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device``, or the CPU (with a warning) when a fitted GPU device is absent here.

    A pickle fitted on a GPU machine and loaded on a CPU-only one still works (the
    network is stored as CPU tensors): it runs on the CPU rather than failing a deployment.
    """
    try:
        return resolve_device(device)
    except ValueError as error:
        if _device_type(device) not in ("cuda", "mps"):
            raise
        warnings.warn(
            f"{error.args[0].split(';')[0]}: running on the CPU instead (set_params(device=None) silences this)",
            RuntimeWarning,
            stacklevel=5,
        )
        return torch.device("cpu")


def _device_type(device) -> str | None:
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return None


def build_runner(
    model: nn.Module,
    device: torch.device,
    backend: str,
    precision: str,
    preprocessing: Preprocessing,
    quantized_graph: bytes | None = None,
) -> ModelRunner:
    """A runner of ``model`` (or of ``quantized_graph``, the int8 graph) on ``device``."""
    autocast_dtype = PRECISIONS[precision]
    if quantized_graph is not None:
        module = OnnxRuntimeModule(quantized_graph, onnx_session_threads(), {"graph": "int8, calibrated in fit"})
    else:
        module = prepare_module(
            model, device, backend, input_size=preprocessing.crop, autocast=autocast_dtype is not None
        )
    return ModelRunner(module, device, preprocessing, autocast_dtype)


class PreparedRunner:
    """One prepared runner per key, built once even when several threads ask at once.

    Kept out of pickles by its owner: a copy prepares again (from the artifact cache,
    usually) on first use.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prepared: tuple[tuple, ModelRunner] | None = None  # one attribute: read atomically

    @property
    def runner(self) -> ModelRunner | None:
        """The runner prepared last, None before the first use."""
        return None if self.prepared is None else self.prepared[1]

    def get(self, key: tuple, build: Callable[[], ModelRunner]) -> ModelRunner:
        """The runner prepared for ``key``; ``build()`` makes it when the key changed."""
        prepared = self.prepared
        if prepared is not None and prepared[0] == key:
            return prepared[1]
        with self.lock:
            if self.prepared is None or self.prepared[0] != key:  # another thread may have prepared it meanwhile
                self.prepared = (key, build())
            return self.prepared[1]

