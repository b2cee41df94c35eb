"""Opt-in JPEG decoding on the GPU (``decode_device="cuda"``), in batches.

A batch of JPEG files is read on the host and decoded by ``torchvision.io.decode_jpeg``
on the device (nvJPEG on CUDA), then resized (bilinear, antialiased) and
center-cropped there by the recipe's sizes. Not bit-exact: the IDCT, the chroma
upsampling and the resize filter differ from Pillow's; the measured deviation is in
docs/performance.md. Anything that is not a JPEG, or that the device decoder refuses,
goes through the exact Pillow path, so a batch never fails as a whole. The same code
runs with ``decode_device="cpu"`` (libjpeg-turbo in torchvision), which is how it is
tested on machines without a GPU.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..exceptions import ImageLoadError
from .decoding import decode_or_error

_JPEG_MAGIC = b"\xff\xd8\xff"


def batch_decoder(preprocessing, device: torch.device, exact: Callable, max_pixels: int | None = None) -> Callable:
    """``decode_batch(paths)``: :func:`decode_jpeg_batch` with these settings."""

    def decode_batch(paths: Sequence) -> list[np.ndarray | ImageLoadError]:
        return decode_jpeg_batch(paths, preprocessing, device, exact, max_pixels)

    return decode_batch


def decode_jpeg_batch(
    paths: Sequence, preprocessing, device: torch.device, exact: Callable, max_pixels: int | None = None
) -> list[np.ndarray | ImageLoadError]:
    """``(crop, crop, 3)`` uint8 pixels for each path; ``exact(path)`` for what is not a JPEG.

    ``exact`` also takes the JPEGs over ``max_pixels`` (None: Pillow's limit), so that
    they are refused from their header as on the exact path, never decoded.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    results: list = [None] * len(paths)
    jpegs, data = [], []
    for i, path in enumerate(paths):
        raw = _read(path)
        if raw is None or not raw.startswith(_JPEG_MAGIC) or not _within(raw, max_pixels):
            results[i] = decode_or_error(exact, path)
        else:
            jpegs.append(i)
            data.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    if jpegs:
        try:
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        except RuntimeError:  # one undecodable file fails the batch call: decode each exactly instead
            images = [None] * len(jpegs)
        for i, image in zip(jpegs, images):
            results[i] = decode_or_error(exact, paths[i]) if image is None else _resize_and_crop(image, preprocessing)
    return results


def _within(raw: bytes, max_pixels: int | None) -> bool:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(io.BytesIO(raw)) as header:  # parses the header only
            return limit is None or header.width * header.height <= limit
    except Exception:  # noqa: BLE001 - the exact path names what is wrong with the file
        return False


def _read(path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (OSError, TypeError, ValueError):
        return None  # the exact path reports why, with the file's name


def _resize_and_crop(image: torch.Tensor, preprocessing) -> np.ndarray:
    """``(3, H, W)`` uint8 on any device -> the recipe's ``(crop, crop, 3)`` uint8 crop on the host."""
    height, width = image.shape[1:]
    new_width, new_height = preprocessing.resized_size(width, height)
    mode = preprocessing.interpolation if preprocessing.interpolation in ("bilinear", "bicubic") else "bilinear"
    resized = torch.nn.functional.interpolate(
        image.unsqueeze(0).float(), size=(new_height, new_width), mode=mode, antialias=True, align_corners=False
    )
    crop = preprocessing.crop
    top = int(round((new_height - crop) / 2.0))
    left = int(round((new_width - crop) / 2.0))
    pixels = resized[0, :, top : top + crop, left : left + crop].round_().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().cpu().numpy()
