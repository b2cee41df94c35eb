"""Each family's features equal its owning library's own preprocessing + forward.

Random weights saved to a file and passed as ``weights=PATH``; the reference is the
library's own pipeline on the same photos: torchvision ``weights.transforms()`` and the
classifier's final-Linear input, timm ``create_transform(**resolve_data_config(model=...))``
and ``model(x)`` with ``num_classes=0``, OpenCLIP ``preprocess`` and ``encode_image``.
Random networks are nearly blind to preprocessing, so the preprocessed tensors are
compared too, and the features again after centring them on their mean over the photos.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.decoding import decode_pixels

pytestmark = pytest.mark.shared

MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def photos(imagenet_dir) -> list:
    """Six photos of varied sizes and aspect ratios (tiny to large), two of them grayscale."""
    by_mode: dict[str, list] = {"RGB": [], "L": []}
    for path in sorted(imagenet_dir.glob("*.JPEG")):
        with Image.open(path) as image:
            by_mode.setdefault(image.mode, []).append((image.size, path))
    rgb = sorted(by_mode["RGB"], key=lambda entry: entry[0][0] * entry[0][1])
    chosen = [rgb[0], rgb[len(rgb) // 3], rgb[2 * len(rgb) // 3], rgb[-1], *by_mode["L"][:2]]
    return [path for _, path in chosen]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_same_features(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert cosines(ours, reference).min() >= MIN_COSINE
    centred = cosines(ours - ours.mean(0), reference - reference.mean(0))
    assert centred.min() >= MIN_COSINE, centred


def assert_same_inputs(embedder: CNNImageEmbedder, transform, photos) -> None:
    """Our decode path gives the library transform's tensor (to float rounding)."""
    recipe = embedder.preprocessing_
    for path in photos:
        expected = transform(Image.open(path).convert("RGB"))
        pixels = torch.from_numpy(np.array(decode_pixels(path, recipe, None)))[None]
        got = recipe.normalize(pixels, torch.contiguous_format)[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=f"preprocessing differs on {path.name}")


def embed(model_name, weights, photos, **params) -> tuple[CNNImageEmbedder, np.ndarray]:
    embedder = CNNImageEmbedder(model_name, weights, backend="eager", batch_size=4, draft=False, **params).fit()
    return embedder, embedder.transform([str(p) for p in photos])


# -- torchvision -------------------------------------------------------------------

TORCHVISION_CASES = {
    # mobilenet_v2 and shufflenet_v2_x1_0 resize square by default (the original module's
    # recipe); resize_mode="shorter_side" selects their weights' own torchvision recipe.
    "mobilenet_v2": {"resize_mode": "shorter_side"},
    "shufflenet_v2_x1_0": {"resize_mode": "shorter_side"},
    "resnet50": {},
    "efficientnet_b3": {},
    "convnext_tiny": {},
}


def torchvision_reference(model: torch.nn.Module, transform, photos) -> np.ndarray:
    """What the classifier's final Linear receives, captured by a hook on it."""
    final_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured = []
    hook = final_linear.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.no_grad():
        model(torch.stack([transform(Image.open(p).convert("RGB")) for p in photos]))
    hook.remove()
    return captured[0].numpy()


@pytest.mark.parametrize("name", sorted(TORCHVISION_CASES))
def test_torchvision_models_match_their_weights_transforms(name, photos, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    transform = torchvision.models.get_model_weights(name).IMAGENET1K_V1.transforms()
    embedder, ours = embed(name, tmp_path / "weights.pth", photos, **TORCHVISION_CASES[name])
    assert_same_inputs(embedder, transform, photos)
    assert_same_features(ours, torchvision_reference(model, transform, photos))
    assert "IMAGENET1K_V1.transforms()" in embedder.model_info_["recipe_source"]


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x1_0"])
def test_original_models_default_to_the_original_square_recipe(name, photos):
    from torchvision import transforms

    square = transforms.Compose(
        [
            transforms.Resize((256, 256)),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    embedder = CNNImageEmbedder(name, weights=None, random_state=0).fit()
    assert_same_inputs(embedder, square, photos)
    assert "original module" in embedder.model_info_["recipe_source"]


def test_every_other_model_defaults_to_its_weights_recipe():
    embedder = CNNImageEmbedder("efficientnet_b3", weights=None, random_state=0).fit()
    recipe = embedder.model_info_["preprocessing"]
    assert (recipe["resize"], recipe["crop"], recipe["resize_mode"], recipe["interpolation"]) == (
        320, 300, "shorter_side", "bicubic"
    )
    assert embedder.model_info_["input_size"] == [3, 300, 300]


# -- timm --------------------------------------------------------------------------


# timm's own test networks (the ConvNeXt and ViT classes, a few hundred thousand parameters)
# with a pretrained tag: the recipe comes from the tag's config exactly as for the big ones.
@pytest.mark.parametrize("name", ["test_convnext.r160_in1k", "test_vit.r160_in1k"])
def test_timm_models_match_timm_create_transform_and_forward(name, photos, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    classifier = timm.create_model(name, pretrained=False)
    torch.save(classifier.state_dict(), tmp_path / "weights.pth")  # classifier keys included
    reference_model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    reference_model.load_state_dict(
        {k: v for k, v in classifier.state_dict().items() if k in reference_model.state_dict()}
    )
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=reference_model))
    with torch.no_grad():
        reference = reference_model(torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])).numpy()
    embedder, ours = embed(f"timm:{name}", tmp_path / "weights.pth", photos)
    assert_same_inputs(embedder, transform, photos)
    assert_same_features(ours, reference)


# -- OpenCLIP ----------------------------------------------------------------------


def test_open_clip_matches_its_preprocess_and_encode_image(photos, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    model.eval()
    torch.save(model.state_dict(), tmp_path / "clip.pth")  # the whole model, text tower included
    with torch.no_grad():
        reference = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in photos])).numpy()
    embedder, ours = embed("open_clip:ViT-S-32", tmp_path / "clip.pth", photos)
    assert_same_inputs(embedder, preprocess, photos)
    assert_same_features(ours, reference)
    # Only the image tower is kept: pickles do not carry the text tower.
    assert embedder.model_.state_dict().keys() == model.visual.state_dict().keys()
    assert embedder.n_features_out_ == 384
