"""decode_device: the batched torchvision JPEG path, run here with device="cpu" (no GPU needed)."""

from __future__ import annotations

import numpy as np
import torch

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.decoding import decode_pixels
from skimgfeat.engine.gpu_decode import decode_jpeg_batch
from skimgfeat.engine.preprocessing import Preprocessing
from skimgfeat.exceptions import TOO_MANY_PIXELS, ImageLoadError

CPU = torch.device("cpu")


def exact_decoder(preprocessing, max_pixels=None):
    return lambda path: decode_pixels(path, preprocessing, max_pixels)


def test_batch_decode_is_within_one_level_of_pillow(synthetic_photos):
    recipe = Preprocessing()
    got = decode_jpeg_batch(synthetic_photos, recipe, CPU, exact_decoder(recipe))
    for path, pixels in zip(synthetic_photos, got):
        expected = decode_pixels(path, recipe, None)
        assert pixels.shape == expected.shape == (224, 224, 3) and pixels.dtype == np.uint8
        difference = np.abs(pixels.astype(int) - expected.astype(int))
        if path.suffix == ".png":  # not a JPEG: the exact path itself
            assert difference.max() == 0
        else:  # same libjpeg IDCT on the CPU; only the resize filter's rounding differs
            assert difference.max() <= 2 and difference.mean() < 0.5


def test_bad_and_oversized_files_fail_alone_with_the_exact_paths_reasons(synthetic_photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    recipe = Preprocessing()
    results = decode_jpeg_batch([synthetic_photos[0], broken, tmp_path / "missing.jpg"], recipe, CPU,
                                exact_decoder(recipe))
    assert isinstance(results[0], np.ndarray)
    assert isinstance(results[1], ImageLoadError) and "broken.jpg" in str(results[1])
    assert isinstance(results[2], ImageLoadError) and "missing.jpg" in str(results[2])
    (refused,) = decode_jpeg_batch([synthetic_photos[0]], recipe, CPU, exact_decoder(recipe, 100), max_pixels=100)
    assert isinstance(refused, ImageLoadError) and refused.reason == TOO_MANY_PIXELS


def test_embedder_with_batch_decoding_stays_close_to_the_exact_path(synthetic_photos):
    settings = dict(model_name="shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu")
    exact = CNNImageEmbedder(**settings).fit().transform(synthetic_photos)
    batched = CNNImageEmbedder(decode_device="cpu", batch_size=4, **settings).fit().transform(synthetic_photos)
    assert batched.shape == exact.shape
    centred_a, centred_b = exact - exact.mean(0), batched - batched.mean(0)  # random nets are blind to pixels
    cosine = (centred_a * centred_b).sum(1) / (np.linalg.norm(centred_a, axis=1) * np.linalg.norm(centred_b, axis=1))
    assert cosine.min() >= 0.99
