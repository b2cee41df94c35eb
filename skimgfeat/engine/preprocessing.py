"""A network's preprocessing recipe, split where it is cheapest to run.

The recipe (resize size and mode, crop, interpolation, mean, std) comes with the
weights: see :mod:`skimgfeat.registry`. Per image (in decode workers, on uint8 pixels):
resize and center crop with Pillow, exactly as ``torchvision.transforms.Resize`` +
``CenterCrop`` do on a PIL image (what timm's and OpenCLIP's eval transforms run).
Per batch (on the inference device): ``ToTensor`` + ``Normalize``, with the same
float32 operations in the same order, so results are bit-identical to the torchvision
pipeline while the host only moves uint8 bytes. On the CPU those operations are run
once per channel and byte value (a 3x256 lookup table) instead of once per pixel: the
same floats, much faster than four passes of elementwise tensor arithmetic (measured in
benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("square", "shorter_side")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


# A JPEG is decoded at reduced scale only down to this many times the resize target.
DRAFT_MARGIN = 2

@dataclass(frozen=True)
class Preprocessing:
    """Resize, center crop and normalise.

    Parameters
    ----------
    resize : int
        Target of the resize step (256).
    crop : int
        Side of the square center crop fed to the network (224).
    resize_mode : {"square", "shorter_side"}
        ``"square"`` resizes to ``resize x resize`` ignoring aspect ratio (the original
        module's recipe); ``"shorter_side"`` resizes the shorter side to ``resize``
        keeping aspect ratio (torchvision's ``Resize(256)``).
    interpolation : {"bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"}
        Pillow's resampling filter for the resize (antialiased, as torchvision's
        ``Resize(antialias=True)``).
    mean, std : tuple of float
        Per-channel normalisation, RGB order.
    draft : bool
        Let a JPEG at least twice the resize target decode at a reduced scale (DCT
        scaling: 1/2, 1/4 or 1/8) that still keeps it at least twice the target, before
        the antialiased resize. Several times faster on camera-sized photos, not
        bit-exact (measured: cosine >= 0.995 to full decoding, docs/performance.md).
    """

    resize: int = 256
    crop: int = 224
    resize_mode: str = "square"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    draft: bool = False

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop}, resize={self.resize}")

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The smallest size a JPEG may be decoded at (both sides), None for full decoding.

        Twice the resize target: the resize then still averages at least 2 x 2 decoded
        pixels into each output pixel, which keeps the features within the measured
        bound of full decoding (the resize target alone, 1 x 1, does not).
        """
        return (DRAFT_MARGIN * self.resize,) * 2 if self.draft else None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, by torchvision's rounding."""
        if self.resize_mode == "square":
            return self.resize, self.resize
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if width <= height else (new_long, self.resize)

    def crop_pixels(self, image: Image.Image) -> np.ndarray:
        """Resize and center-crop an RGB image to a ``(crop, crop, 3)`` uint8 array."""
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, INTERPOLATIONS[self.interpolation])
        width, height = size
        top = int(round((height - self.crop) / 2.0))
        left = int(round((width - self.crop) / 2.0))
        pixels = np.asarray(image)
        return np.ascontiguousarray(pixels[top : top + self.crop, left : left + self.crop])

    def normalize(self, batch: torch.Tensor, memory_format=torch.channels_last) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 in ``memory_format``."""
        if batch.device.type == "cpu":
            return _normalize_by_lookup(batch.numpy(), _lookup_table(self.mean, self.std), memory_format)
        return _normalize_with_tensor_ops(batch, self.mean, self.std).contiguous(memory_format=memory_format)

    def describe(self) -> str:
        """One line, e.g. ``"256 shorter side -> crop 224, bilinear"``."""
        mode = "x".join([str(self.resize)] * 2) if self.resize_mode == "square" else f"{self.resize} shorter side"
        return f"{mode} -> crop {self.crop}, {self.interpolation}"

    def to_dict(self) -> dict:
        record = asdict(self)
        record["color"] = "RGB; alpha composited onto white; EXIF orientation applied"
        return record


def _normalize_with_tensor_ops(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """torchvision's ``ToTensor`` + ``Normalize`` on a ``(N, H, W, 3)`` uint8 batch."""
    mean = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return batch.permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)


@lru_cache(maxsize=8)
def _lookup_table(mean: tuple, std: tuple) -> np.ndarray:
    """``(3, 256)`` float32: the normalised value of every byte in every channel."""
    every_byte = torch.arange(256, dtype=torch.uint8).view(1, 256, 1, 1).expand(1, 256, 1, 3)
    table = _normalize_with_tensor_ops(every_byte, mean, std).reshape(3, 256).numpy().copy()
    table.flags.writeable = False
    return table


def _normalize_by_lookup(pixels: np.ndarray, table: np.ndarray, memory_format) -> torch.Tensor:
    n, height, width, _ = pixels.shape
    if memory_format == torch.channels_last:
        out = np.empty((n, height, width, 3), dtype=np.float32)
    else:
        out = np.empty((n, 3, height, width), dtype=np.float32).transpose(0, 2, 3, 1)  # NHWC view of NCHW memory
    for channel in range(3):
        np.take(table[channel], pixels[..., channel], out=out[..., channel], mode="clip")
    return torch.from_numpy(out).permute(0, 3, 1, 2)
