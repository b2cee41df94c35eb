"""The split recipe (Pillow per image, normalisation per batch) is torchvision's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from skimgfeat.engine.preprocessing import Preprocessing

TORCHVISION_RESIZE = {"square": (256, 256), "shorter_side": 256}


def torchvision_tensor(image: Image.Image, resize_mode: str) -> torch.Tensor:
    transform = transforms.Compose(
        [
            transforms.Resize(TORCHVISION_RESIZE[resize_mode]),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    return transform(image)


def odd_sized_photos(synthetic_photos) -> list[Image.Image]:
    """The synthetic photos at sizes that exercise up- and down-scaling and odd crops."""
    sizes = [(80, 60), (1201, 799), (300, 257), (257, 1000), (224, 224), (511, 512)]
    return [Image.open(path).convert("RGB").resize(size) for path, size in zip(synthetic_photos, sizes)]


@pytest.mark.parametrize("resize_mode", ["square", "shorter_side"])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_batch_equals_torchvision_bit_for_bit(synthetic_photos, resize_mode, memory_format):
    images = odd_sized_photos(synthetic_photos)
    recipe = Preprocessing(resize_mode=resize_mode)
    pixels = np.stack([recipe.crop_pixels(image) for image in images])
    batch = recipe.normalize(torch.from_numpy(pixels), memory_format)
    expected = torch.stack([torchvision_tensor(image, resize_mode) for image in images])
    assert batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=memory_format)
    assert torch.equal(batch, expected)


def test_every_byte_value_normalises_as_torchvision_does():
    every_byte = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    batch = Preprocessing(crop=16, resize=16).normalize(torch.from_numpy(every_byte))
    expected = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(
        transforms.ToTensor()(Image.fromarray(every_byte[0]))
    )
    assert torch.equal(batch[0], expected)
