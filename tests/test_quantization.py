"""precision="int8": calibrated on the photos passed to fit, close to float32, cached, pickled whole.

Speed and ImageNet accuracy against float32 are measured in benchmarks/, never here.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.decoding import pixel_decoder
from skimgfeat.engine.embedding import embedder_cache
from skimgfeat.engine.quantization import calibration_paths, check_quantized


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


@pytest.fixture(scope="module")
def int8_and_float(synthetic_photos, traced_templates):
    settings = dict(model_name="shufflenet_v2_x0_5", weights=None, random_state=0, device="cpu")
    int8 = CNNImageEmbedder(precision="int8", **settings).fit(synthetic_photos[:4])
    return int8, CNNImageEmbedder(**settings).fit()


def _cache_root(embedder):
    return embedder_cache("cache", embedder.model_info_, embedder.max_pixels, embedder.decode_device).root


def test_int8_features_are_close_to_float32(int8_and_float, synthetic_photos):
    int8, float32 = int8_and_float
    got, expected = int8.transform(synthetic_photos), float32.transform(synthetic_photos)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert cosines(got, expected).min() >= 0.99
    # centred on the photos' mean: a random network is nearly blind to its input
    centred = cosines(got - got.mean(0), expected - expected.mean(0))
    assert centred.min() >= 0.9
    assert not np.array_equal(got, expected)  # it is the quantised graph that ran
    assert int8.model_info_["calibration"]["n_images"] == 4


def test_int8_pickles_whole_and_refits_from_the_cache(int8_and_float, synthetic_photos, artifact_folder):
    int8, _ = int8_and_float
    expected = int8.transform(synthetic_photos)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(int8)).transform(synthetic_photos), expected)

    clone(int8).fit(synthetic_photos[:4])
    (entry,) = (artifact_folder / "onnx-int8").iterdir()
    written = entry.stat().st_mtime_ns
    refit = clone(int8).fit(synthetic_photos[:4])
    assert entry.stat().st_mtime_ns == written  # calibrated once, then read back
    np.testing.assert_array_equal(refit.transform(synthetic_photos), expected)


def test_other_calibration_photos_give_another_graph_and_cache_namespace(int8_and_float, synthetic_photos):
    int8, _ = int8_and_float
    other = clone(int8).fit(synthetic_photos[2:])
    assert other.quantized_graph_ != int8.quantized_graph_
    assert _cache_root(other) != _cache_root(int8)


def test_int8_needs_calibration_photos_and_the_onnx_cpu_path(synthetic_photos):
    with pytest.raises(ValueError, match=r"fit\(X\)"):
        CNNImageEmbedder(weights=None, precision="int8", device="cpu").fit()
    with pytest.raises(ValueError, match="backend"):
        CNNImageEmbedder(weights=None, precision="int8", device="cpu", backend="eager").fit(synthetic_photos)


def test_calibration_photos_are_spread_over_the_input():
    assert calibration_paths(list(range(10)), 4) == [0, 3, 6, 9]
    assert calibration_paths([1, 2], 4) == [1, 2]


@pytest.mark.shared
def test_int8_keeps_real_features_and_predictions(shared_weights, imagenet_dir, grocery_photos):
    """Calibrated on shop photos, evaluated on other (ImageNet) photos, as a user would."""
    photos = sorted(imagenet_dir.glob("*.JPEG"))[:16]
    int8 = CNNImageEmbedder(weights=shared_weights, device="cpu", precision="int8").fit(grocery_photos[::40][:16])
    float32 = CNNImageEmbedder(weights=shared_weights, device="cpu").fit()
    got, expected = int8.transform(photos), float32.transform(photos)
    assert cosines(got, expected).min() >= 0.95
    assert np.median(cosines(got, expected)) >= 0.99


def test_int8_refuses_to_calibrate_on_fewer_than_four_photos(synthetic_photos):
    with pytest.raises(ValueError, match="at least 4"):
        CNNImageEmbedder("shufflenet_v2_x0_5", weights=None, precision="int8", device="cpu").fit(synthetic_photos[:3])


def test_int8_records_how_closely_it_follows_float32_on_the_calibration_photos(int8_and_float):
    int8, _ = int8_and_float
    calibration = int8.model_info_["calibration"]
    assert 0.99 <= calibration["cosine_min"] <= calibration["cosine_mean"] <= 1.0


def test_a_quantised_graph_far_from_the_float_one_is_reported(int8_and_float, synthetic_photos):
    int8, _ = int8_and_float
    float_module = int8.model_

    class Broken(torch.nn.Module):  # what a bad quantisation amounts to: other features
        def forward(self, batch):
            return -float_module(batch)

    decode = pixel_decoder(int8.preprocessing_, None)
    pixels = np.stack([decode(path) for path in synthetic_photos[:4]])
    with pytest.warns(UserWarning, match=r"min cosine -1\.0000 < 0\.95.*precision='float32'"):
        cosine = check_quantized(float_module, Broken(), pixels, int8.preprocessing_)
    np.testing.assert_allclose(cosine, -1.0)
