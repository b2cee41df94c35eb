"""Features are the published recipe, to float precision, with real ImageNet weights.

Reference: a plain torchvision MobileNetV2 forward on torchvision-transformed tensors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from skimgfeat import CNNImageEmbedder

pytestmark = pytest.mark.shared

RECIPES = {
    "square": transforms.Resize((256, 256)),
    "shorter_side": transforms.Resize(256),
}


def reference_transform(resize_mode: str):
    return transforms.Compose(
        [
            RECIPES[resize_mode],
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


@pytest.fixture(scope="module")
def reference_model(shared_weights):
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(shared_weights, map_location="cpu", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def labelled(imagenet_dir) -> pd.DataFrame:
    table = pd.read_csv(imagenet_dir / "labels.csv")
    table["path"] = [str(imagenet_dir / name) for name in table["filename"]]
    return table


def reference_features(model, paths, resize_mode: str) -> np.ndarray:
    transform = reference_transform(resize_mode)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        pooled = torch.nn.functional.adaptive_avg_pool2d(model.features(batch), 1)
    return torch.flatten(pooled, 1).numpy()


@pytest.mark.parametrize("resize_mode", ["square", "shorter_side"])
def test_features_equal_a_plain_torchvision_forward(reference_model, labelled, shared_weights, resize_mode):
    paths = list(labelled["path"][::5])  # 20 photos, grayscale and large ones among them
    expected = reference_features(reference_model, paths, resize_mode)
    features = CNNImageEmbedder(weights=shared_weights, resize_mode=resize_mode, draft=False).fit().transform(paths)
    relative_error = np.linalg.norm(features - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert relative_error.max() <= 1e-4
    cosine = np.sum(features * expected, axis=1) / (
        np.linalg.norm(features, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999


@pytest.mark.parametrize(("resize_mode", "stated_top1"), [("square", 0.87), ("shorter_side", 0.81)])
def test_weights_own_classifier_on_the_features_reaches_the_stated_top1(
    shared_weights, labelled, resize_mode, stated_top1
):
    state = torch.load(shared_weights, map_location="cpu", weights_only=True)
    weight, bias = state["classifier.1.weight"].numpy(), state["classifier.1.bias"].numpy()
    features = CNNImageEmbedder(weights=shared_weights, resize_mode=resize_mode).fit().transform(labelled["path"])
    predicted = (features @ weight.T + bias).argmax(axis=1)
    top1 = np.mean(predicted == labelled["class_index"].to_numpy())
    # a broken normalisation, channel order or crop drops top-1 far below this
    assert top1 >= stated_top1 - 0.02
