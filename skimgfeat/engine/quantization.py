"""``precision="int8"``: the exported graph quantised by ONNX Runtime, calibrated on real photos.

Static quantisation (``onnxruntime.quantization.quantize_static``): weights int8 per
output channel, activations uint8 with ranges measured on calibration photos, in the
QDQ format that ONNX Runtime fuses into integer kernels (VNNI dot products on CPUs
that have them). The calibration photos are those passed to ``fit(X)``: the photos
the features are for, not a fixed set from another domain. The quantised graph is a
fitted attribute (pickles stay self-contained) and is kept in the artifact cache under
the float graph and the calibration pixels, so a refit or clone on the same photos
does not calibrate again. Accuracy and speed against float32: benchmarks/README.md.

Each quantised graph is checked against the float graph on the calibration photos
(per-photo cosine of the features, recorded in ``model_info_["calibration"]``); below
:data:`MIN_CALIBRATION_COSINE` the fit warns, naming the cosine: int8 then changes the
features more than it usually does, and float32 is the safer choice.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..storage import artifact_cache
from .backends import OnnxRuntimeModule, onnx_session_threads, prepare_module
from .decoding import decode_batches
from .preprocessing import Preprocessing

# Enough photos for stable activation ranges; more mostly costs fit time.
CALIBRATION_IMAGES = 64
# Fewer photos than this cannot give activation ranges that hold for other photos.
MIN_CALIBRATION_IMAGES = 4
_CALIBRATION_BATCH = 16
_SETTINGS = "QDQ;per-channel;activations QUInt8;weights QInt8;MinMax"
# The quantised graph's features agree with the float graph's at least this closely
# (per-photo cosine on the calibration photos) when int8 works as it should.
MIN_CALIBRATION_COSINE = 0.95


def calibrate(model: torch.nn.Module, paths: Sequence, decode, preprocessing: Preprocessing,
              n_workers: int | None = None) -> tuple[bytes, dict]:
    """The int8 graph of ``model`` calibrated on up to :data:`CALIBRATION_IMAGES` of ``paths``, and its record.

    The record (``model_info_["calibration"]``) names the calibration pixels (their
    sha256: part of the feature cache's namespace) and how closely the int8 features
    follow the float ones on them (``cosine_min``, ``cosine_mean``).
    """
    pixels = calibration_pixels(calibration_paths(paths), decode, n_workers)
    float_module = prepare_module(model, torch.device("cpu"), "onnxruntime", input_size=preprocessing.crop)
    if not isinstance(float_module, OnnxRuntimeModule):
        raise RuntimeError("precision='int8' needs the network exported to ONNX, which failed (see the warning)")
    quantized = quantize_graph(float_module.graph, pixels, preprocessing)
    cosine = check_quantized(float_module, OnnxRuntimeModule(quantized, onnx_session_threads()), pixels,
                             preprocessing)
    return quantized, {
        "n_images": len(pixels),
        "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
    }


def check_quantized(float_module: torch.nn.Module, quantized_module: torch.nn.Module, pixels: np.ndarray,
                    preprocessing: Preprocessing, floor: float = MIN_CALIBRATION_COSINE) -> np.ndarray:
    """Per-photo cosine between the quantised and the float features of ``pixels``; warns below ``floor``."""
    rows = []
    for start in range(0, len(pixels), _CALIBRATION_BATCH):
        batch = preprocessing.normalize(torch.from_numpy(pixels[start : start + _CALIBRATION_BATCH]),
                                        torch.contiguous_format)
        with torch.inference_mode():
            rows.append((float_module(batch).double().flatten(1), quantized_module(batch).double().flatten(1)))
    expected = torch.cat([pair[0] for pair in rows])
    got = torch.cat([pair[1] for pair in rows])
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=1, eps=1e-300).numpy()
    if not cosine.min() >= floor:
        warnings.warn(
            f"precision='int8': the quantised network's features differ from float32 on the calibration photos "
            f"(min cosine {cosine.min():.4f} < {floor}); prefer precision='float32' for this network",
            UserWarning,
            stacklevel=3,
        )
    return cosine


def calibration_paths(paths: Sequence, n_images: int = CALIBRATION_IMAGES) -> list:
    """Up to ``n_images`` of ``paths``, evenly spread over them (not just the first ones)."""
    if len(paths) <= n_images:
        return list(paths)
    positions = np.linspace(0, len(paths) - 1, n_images).round().astype(int)
    return [paths[i] for i in positions]


def calibration_pixels(paths: Sequence, decode, n_workers: int | None = None) -> np.ndarray:
    """The decoded ``(n, crop, crop, 3)`` uint8 pixels of the calibration photos that load.

    Fewer than :data:`MIN_CALIBRATION_IMAGES` that load is an error: activation ranges
    measured on one or two photos clip everything the others contain.
    """
    batches = decode_batches(paths, decode, _CALIBRATION_BATCH, on_error="nan", n_workers=n_workers)
    decoded = [batch.stacked for batch in batches if batch.stacked is not None]
    n_loaded = sum(len(pixels) for pixels in decoded)
    if n_loaded < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"precision='int8' calibrates on the photos passed to fit and needs at least "
            f"{MIN_CALIBRATION_IMAGES} that load; {n_loaded} of the {len(paths)} chosen did"
        )
    return np.concatenate(decoded)


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
