"""CNNImageEmbedder follows the scikit-learn estimator contract.

scikit-learn's check_estimator feeds numeric arrays, which an image-path transformer
cannot take, so the contract is checked here piece by piece on real files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from skimgfeat import CNNImageEmbedder, ImageLoadError


def random_embedder(**params) -> CNNImageEmbedder:
    return CNNImageEmbedder(weights=None, random_state=0, **params)


@pytest.fixture(scope="module")
def fitted(synthetic_photos) -> CNNImageEmbedder:
    return random_embedder(batch_size=4).fit()


def test_init_only_stores_parameters():
    embedder = CNNImageEmbedder(model_name="no-such-model", weights="/nowhere.pth")
    assert embedder.get_params()["model_name"] == "no-such-model"
    assert not hasattr(embedder, "model_")
    with pytest.raises(ValueError, match="unknown model_name 'no-such-model'"):
        embedder.fit()


def test_unfitted_estimator_pickles_small_and_clones_cheaply():
    embedder = CNNImageEmbedder(model_name="shufflenet_v2_x1_0", batch_size=8)
    assert len(pickle.dumps(embedder)) < 2_000
    twin = clone(embedder)
    assert twin.get_params() == embedder.get_params()


def test_params_round_trip_through_set_params():
    embedder = CNNImageEmbedder()
    embedder.set_params(model_name="resnet18", device="cpu", on_error="nan")
    assert embedder.get_params()["model_name"] == "resnet18"
    assert clone(embedder).get_params() == embedder.get_params()


def test_fitted_attributes_and_eval_mode(fitted):
    assert fitted.n_features_out_ == 1280
    assert not fitted.model_.training
    assert all(not p.requires_grad for p in fitted.model_.parameters())
    info = fitted.model_info_
    assert info["model_name"] == "mobilenet_v2"
    assert info["weights"] == "random"
    assert info["n_features"] == 1280
    assert info["preprocessing"]["resize"] == 256 and info["preprocessing"]["crop"] == 224
    assert {"torch", "torchvision", "skimgfeat"} <= set(info["versions"])


def test_transform_before_fit_raises_not_fitted(synthetic_photos):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        CNNImageEmbedder().transform(synthetic_photos)


def test_one_float32_row_per_path_in_input_order(fitted, synthetic_photos):
    features = fitted.transform(synthetic_photos)
    assert features.shape == (len(synthetic_photos), 1280)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    reversed_features = fitted.transform(synthetic_photos[::-1])
    np.testing.assert_array_equal(reversed_features, features[::-1])


def test_transform_is_deterministic(fitted, synthetic_photos):
    np.testing.assert_array_equal(fitted.transform(synthetic_photos), fitted.transform(synthetic_photos))


def test_random_state_makes_random_weights_reproducible(synthetic_photos):
    first = random_embedder().fit().transform(synthetic_photos[:2])
    again = random_embedder().fit().transform(synthetic_photos[:2])
    other = CNNImageEmbedder(weights=None, random_state=1).fit().transform(synthetic_photos[:2])
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize(
    "make_input",
    [
        lambda paths: [str(p) for p in paths],
        lambda paths: tuple(paths),
        lambda paths: np.asarray([str(p) for p in paths], dtype=object),
        lambda paths: pd.Series([str(p) for p in paths]),
        lambda paths: pd.DataFrame({"photo": [str(p) for p in paths]}),
        lambda paths: np.asarray([[str(p)] for p in paths], dtype=object),
    ],
    ids=["list", "tuple-of-pathlib", "1d-array", "series", "one-column-frame", "n-by-1-array"],
)
def test_accepted_single_photo_inputs_give_the_same_rows(fitted, synthetic_photos, make_input):
    expected = fitted.transform([str(p) for p in synthetic_photos])
    np.testing.assert_array_equal(fitted.transform(make_input(synthetic_photos)), expected)


def test_several_photos_per_sample_give_a_nan_padded_3d_array(fitted, synthetic_photos):
    single = fitted.transform(synthetic_photos)
    samples = [synthetic_photos[0:3], [synthetic_photos[3]], [], synthetic_photos[4:6]]
    features = fitted.transform(samples)
    assert features.shape == (4, 3, 1280)
    np.testing.assert_array_equal(features[0], single[0:3])
    np.testing.assert_array_equal(features[1, 0], single[3])
    assert np.isnan(features[1, 1:]).all() and np.isnan(features[2]).all()
    np.testing.assert_array_equal(features[3, :2], single[4:6])


def test_multi_column_frame_is_several_photos_per_sample(fitted, synthetic_photos):
    frame = pd.DataFrame(
        {"front": [str(synthetic_photos[0]), str(synthetic_photos[2])], "back": [str(synthetic_photos[1]), None]}
    )
    features = fitted.transform(frame)
    single = fitted.transform(synthetic_photos[:3])
    assert features.counts.tolist() == [2, 1]  # the photos' rows, no padding
    np.testing.assert_array_equal(features[0], single[:2])
    np.testing.assert_array_equal(features[1], single[2:3])
    padded = np.asarray(features)  # the padded array, when asked for
    assert padded.shape == (2, 2, 1280)
    np.testing.assert_array_equal(padded[1, 0], single[2])
    assert np.isnan(padded[1, 1]).all()


def test_a_single_path_is_refused_with_a_hint(fitted, synthetic_photos):
    with pytest.raises(TypeError, match="wrap it in a list"):
        fitted.transform(str(synthetic_photos[0]))


def test_feature_names_are_the_original_columns(fitted):
    names = fitted.get_feature_names_out()
    assert names[0] == "img_feature_0" and names[-1] == "img_feature_1279" and len(names) == 1280


def test_set_output_pandas_keeps_the_input_index(synthetic_photos):
    embedder = random_embedder().set_output(transform="pandas").fit()
    paths = pd.Series([str(p) for p in synthetic_photos[:3]], index=["lot-a", "lot-b", "lot-c"])
    frame = embedder.transform(paths)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["lot-a", "lot-b", "lot-c"]
    assert list(frame.columns) == list(embedder.get_feature_names_out())
    assert clone(embedder)._sklearn_output_config == {"transform": "pandas"}


def test_tags_declare_string_input_and_no_target():
    tags = CNNImageEmbedder().__sklearn_tags__()
    assert tags.input_tags.string
    assert not tags.target_tags.required
    assert tags.transformer_tags.preserves_dtype == []


def test_fitted_pickle_round_trip_gives_identical_features(fitted, synthetic_photos):
    before = fitted.transform(synthetic_photos)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(synthetic_photos), before)
    assert restored.model_info_ == fitted.model_info_


def test_pickle_holds_no_runtime_copy(fitted, synthetic_photos):
    fitted.transform(synthetic_photos[:1])
    assert "_runtime" not in fitted.__getstate__()


@pytest.mark.parametrize("device", ["cuda:7", "tpu", "mps"])
def test_unusable_devices_are_refused_clearly(device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(ValueError, match="device"):
        CNNImageEmbedder(device=device, weights=None).fit()


@pytest.mark.parametrize(
    ("param", "value"),
    [("on_error", "zero"), ("batch_size", 0), ("resize_mode", "crop"), ("precision", "int4"), ("backend", "tpu"),
     ("n_workers", 0), ("multi_scale", 0), ("fine_tune", -1), ("fine_tune_epochs", 0), ("max_pixels", -1),
     ("resize_size", "big"), ("draft", "yes"), ("fine_tune_task", "ranking")],
)
def test_invalid_parameters_fail_in_fit_naming_the_parameter(param, value):
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter of CNNImageEmbedder"):
        CNNImageEmbedder(weights=None, **{param: value}).fit()


def test_unknown_weights_name_lists_the_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        CNNImageEmbedder(weights="IMAGENET_V9").fit()


def test_state_dict_file_without_classifier_is_accepted(tmp_path, synthetic_photos):
    reference = random_embedder().fit()
    full = torchvision.models.mobilenet_v2()
    full.load_state_dict(reference.model_.state_dict(), strict=False)
    weights = {k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")}
    path = tmp_path / "headless weights.pth"
    torch.save(weights, path)
    loaded = CNNImageEmbedder(weights=path).fit()
    np.testing.assert_array_equal(loaded.transform(synthetic_photos[:2]), reference.transform(synthetic_photos[:2]))
    assert loaded.model_info_["weights_sha256"] is not None
    assert loaded.model_info_["weights"].startswith("file:")


def test_fine_tuned_weights_with_another_head_are_accepted(tmp_path, synthetic_photos):
    reference = random_embedder().fit()
    fine_tuned = torchvision.models.mobilenet_v2(num_classes=10)  # e.g. 10 auction categories
    fine_tuned.load_state_dict(reference.model_.state_dict(), strict=False)
    path = tmp_path / "fine-tuned.pth"
    torch.save(fine_tuned.state_dict(), path)
    loaded = CNNImageEmbedder(weights=path).fit()
    np.testing.assert_array_equal(loaded.transform(synthetic_photos[:2]), reference.transform(synthetic_photos[:2]))


def test_mismatched_state_dict_lists_what_does_not_fit(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys .*unexpected keys .*") as error:
        CNNImageEmbedder(weights=str(path)).fit()
    assert "resnet.pth" in str(error.value) and "mobilenet_v2" in str(error.value)


def test_shape_mismatch_is_reported_per_key(tmp_path):
    state = torchvision.models.mobilenet_v2().state_dict()
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad-shape.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): features.0.0.weight"):
        CNNImageEmbedder(weights=path).fit()


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CNNImageEmbedder(weights=tmp_path / "absent.pth").fit()


def test_bad_file_raises_naming_it_and_nan_mode_keeps_the_row(fitted, synthetic_photos, tmp_path):
    broken = tmp_path / "listing 7_1.jpg"
    broken.write_text("<html>404 Not Found</html>")
    paths = [synthetic_photos[0], broken, synthetic_photos[1]]
    with pytest.raises(ImageLoadError, match="listing 7_1.jpg") as error:
        fitted.transform(paths)
    assert error.value.reason == "not an image"
    lenient = clone(fitted).set_params(on_error="nan").fit()
    features = lenient.transform(paths)
    assert np.isnan(features[1]).all() and np.isfinite(features[[0, 2]]).all()
    assert [(Path(e.path).name, e.reason) for e in lenient.errors_] == [("listing 7_1.jpg", "not an image")]


def test_a_cache_that_cannot_be_written_warns_and_keeps_the_features(tmp_path, synthetic_photos):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        features = random_embedder(cache=not_a_folder).fit().transform(synthetic_photos)
    np.testing.assert_array_equal(features, random_embedder().fit().transform(synthetic_photos))
    assert not list(tmp_path.glob("**/*.tmp"))


def test_feature_cache_serves_repeated_transforms(tmp_path, synthetic_photos):
    cache = tmp_path / "cache"
    first = random_embedder(cache=cache).fit().transform(synthetic_photos)
    assert len(list(cache.rglob("*.npy"))) == len(synthetic_photos)
    served = random_embedder(cache=cache).fit()
    cached = served.transform(synthetic_photos)
    np.testing.assert_array_equal(cached, first)
    assert served._runtime.runner is None  # every vector came from the cache: no backend was prepared for nothing
    other_model = CNNImageEmbedder(weights=None, random_state=1, cache=cache).fit().transform(synthetic_photos[:1])
    assert not np.allclose(other_model[0], first[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_model_saved_for_cuda_runs_on_the_cpu_of_a_machine_without_it(tmp_path, synthetic_photos):
    import joblib

    fitted = random_embedder().fit()
    expected = fitted.transform(synthetic_photos)
    fitted.device = "cuda"  # what a pickle from a GPU machine carries
    joblib.dump(fitted, tmp_path / "gpu-fitted.joblib")
    loaded = joblib.load(tmp_path / "gpu-fitted.joblib")
    with pytest.warns(RuntimeWarning, match="CUDA is not available: running on the CPU instead"):
        features = loaded.transform(synthetic_photos)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="CUDA is not available"):
        clone(loaded).fit()  # fitting anew still refuses an absent device
    loaded.device = "tpu:0"
    with pytest.raises(ValueError, match="invalid device"):
        loaded.transform(synthetic_photos)  # a device that is not an absent accelerator is not guessed
