"""``precision="int8"``: the exported graph quantised by ONNX Runtime, calibrated on real photos.

Static quantisation (``onnxruntime.quantization.quantize_static``): weights int8 per
output channel, activations uint8 with ranges measured on calibration photos, in the
QDQ format that ONNX Runtime fuses into integer kernels (VNNI dot products on CPUs
that have them). The calibration photos are those passed to ``fit(X)``: the photos
the features are for, not a fixed set from another domain. The quantised graph is a
fitted attribute (pickles stay self-contained) and is kept in the artifact cache under
the float graph and the calibration pixels, so a refit or clone on the same photos
does not calibrate again. Accuracy and speed against float32: benchmarks/README.md.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch

from ..exceptions import ImageLoadError
from ..storage import artifact_cache
from .inference import iter_decoded
from .preprocessing import Preprocessing

# Enough photos for stable activation ranges; more mostly costs fit time.
CALIBRATION_IMAGES = 64
_CALIBRATION_BATCH = 16
_SETTINGS = "QDQ;per-channel;activations QUInt8;weights QInt8;MinMax"


def calibration_paths(paths: Sequence, n_images: int = CALIBRATION_IMAGES) -> list:
    """Up to ``n_images`` of ``paths``, evenly spread over them (not just the first ones)."""
    if len(paths) <= n_images:
        return list(paths)
    positions = np.linspace(0, len(paths) - 1, n_images).round().astype(int)
    return [paths[i] for i in positions]


def calibration_pixels(paths: Sequence, decode, n_workers: int) -> np.ndarray:
    """The decoded ``(n, crop, crop, 3)`` uint8 pixels of the calibration photos that load."""
    decoded = [p for p in iter_decoded(paths, decode, n_workers, 4 * n_workers) if not isinstance(p, ImageLoadError)]
    if not decoded:
        raise ValueError(
            f"precision='int8' calibrates on the photos passed to fit, and none of the {len(paths)} "
            "chosen could be loaded"
        )
    return np.stack(decoded)


def quantize_graph(float_graph: bytes, pixels: np.ndarray, preprocessing: Preprocessing) -> bytes:
    """The int8 version of ``float_graph``, calibrated on ``pixels``; cached on disk."""
    key = artifact_cache.digest(
        "int8", artifact_cache.digest(float_graph), artifact_cache.digest(pixels.tobytes(), str(pixels.shape)),
        repr(preprocessing), _SETTINGS, _ort_version(),
    )
    cached = artifact_cache.load("onnx-int8", key)
    if cached is not None:
        return cached
    quantized = _quantize(float_graph, pixels, preprocessing)
    artifact_cache.store("onnx-int8", key, quantized)
    return quantized


def _quantize(float_graph: bytes, pixels: np.ndarray, preprocessing: Preprocessing) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(pixels), _CALIBRATION_BATCH))

        def get_next(self) -> dict | None:
            start = next(self.starts, None)
            if start is None:
                return None
            batch = torch.from_numpy(pixels[start : start + _CALIBRATION_BATCH])
            normalized = preprocessing.normalize(batch, torch.contiguous_format)
            return {"images": np.ascontiguousarray(normalized.numpy())}

    with tempfile.TemporaryDirectory(prefix="skimgfeat-int8-") as folder:
        exported, prepared, quantized = (os.path.join(folder, name) for name in ("f.onnx", "p.onnx", "q.onnx"))
        with open(exported, "wb") as handle:
            handle.write(float_graph)
        quant_pre_process(exported, prepared)  # shape inference and graph clean-up the quantiser expects
        quantize_static(
            prepared,
            quantized,
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        with open(quantized, "rb") as handle:
            return handle.read()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
