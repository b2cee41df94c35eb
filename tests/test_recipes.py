"""Every registered model: features are exactly its final Linear's input; its blocks cover it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from skimgfeat import CNNImageEmbedder
from skimgfeat.engine.decoding import decode_pixels
from skimgfeat.registry import MODEL_REGISTRY, build_model, get_spec, network_blocks
from skimgfeat.registry.built_model import seeded
from skimgfeat.registry.multi_scale import multi_scale_network

# Small inputs keep the 24 forward passes to seconds; the architectures are size-agnostic.
SMALL_BATCH = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# Their random initialisation alone takes 10-20 s on 2 cores; they share layout and head
# with efficientnet_b0-b4 and convnext_tiny/small, which are tested.
LARGEST = {"efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "convnext_base", "convnext_large"}


@pytest.mark.parametrize("name", sorted(set(MODEL_REGISTRY) - LARGEST))
def test_final_linear_of_features_gives_the_models_logits(name):
    spec = MODEL_REGISTRY[name]
    with seeded(0):
        classifier = spec.build_classifier(None).eval()
    final_linear = classifier.get_submodule(spec.final_linear_name(classifier))
    with torch.no_grad():
        logits = classifier(SMALL_BATCH)
        headless, width = spec.strip_head(classifier)
        features = headless(SMALL_BATCH)
    assert features.shape == (2, width) and width == final_linear.in_features
    # Relative to the logits' scale: some random nets emit logits around 1e-14.
    scale = logits.abs().max()
    assert scale > 0 and logits.std() > 0
    torch.testing.assert_close(final_linear(features) / scale, logits / scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["mobilenet_v2", "mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5", "convnext_tiny"]
)
def test_blocks_run_in_order_give_the_features_and_hold_every_parameter_once(name):
    headless = build_model(name, weights=None, random_state=0).module
    blocks = network_blocks(name, headless)
    with torch.no_grad():
        torch.testing.assert_close(nn.Sequential(*blocks)(SMALL_BATCH), headless(SMALL_BATCH), rtol=1e-4, atol=1e-5)
    owners = [id(p) for block in blocks for p in block.parameters()]
    assert len(owners) == len(set(owners))
    assert set(owners) == {id(p) for p in headless.parameters()}


def test_freezing_the_first_blocks_freezes_them_in_the_network():
    headless = build_model("resnet18", weights=None, random_state=0).module
    headless.requires_grad_(True)
    blocks = network_blocks("resnet18", headless)
    for block in blocks[:-2]:  # stem, layer1, layer2
        block.requires_grad_(False)
    assert not headless.conv1.weight.requires_grad and not headless.layer2[0].conv1.weight.requires_grad
    assert headless.layer3[0].conv1.weight.requires_grad and headless.layer4[0].conv1.weight.requires_grad


@pytest.mark.parametrize(
    ("name", "stem_parameter", "last_parameter"),
    [
        ("timm:vit_small_patch16_224", "patch_embed.proj.weight", "norm.weight"),
        ("timm:resnet18", "conv1.weight", "layer4.1.bn2.weight"),
    ],
)
def test_timm_blocks_are_its_parameter_groups_covering_every_parameter_once(name, stem_parameter, last_parameter):
    pytest.importorskip("timm")
    headless = build_model(name, weights=None, random_state=0).module
    blocks = network_blocks(name, headless)
    owners = [id(p) for block in blocks for p in block.parameters()]
    assert len(owners) == len(set(owners))
    assert set(owners) == {id(p) for p in headless.parameters()}
    assert len(blocks) >= 5
    assert id(headless.get_parameter(stem_parameter)) in {id(p) for p in blocks[0].parameters()}
    assert id(headless.get_parameter(last_parameter)) in {id(p) for p in blocks[-1].parameters()}


def test_weights_are_named_by_short_or_full_name_or_enum_member():
    spec = MODEL_REGISTRY["resnet50"]
    weights = torchvision.models.ResNet50_Weights
    assert spec.resolve_weights("pretrained") is weights.IMAGENET1K_V1
    assert spec.resolve_weights("IMAGENET1K_V2") is weights.IMAGENET1K_V2
    assert spec.resolve_weights("ResNet50_Weights.IMAGENET1K_V2") is weights.IMAGENET1K_V2
    assert spec.resolve_weights(weights.IMAGENET1K_V2) is weights.IMAGENET1K_V2
    assert spec.resolve_weights("DEFAULT") is weights.DEFAULT
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        spec.resolve_weights("IMAGENET2K")
    with pytest.raises(ValueError, match="unknown weights"):
        spec.resolve_weights(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)


def test_each_weights_brings_its_own_recipe():
    spec = MODEL_REGISTRY["resnet50"]
    weights = torchvision.models.ResNet50_Weights
    assert (spec.recipe(weights.IMAGENET1K_V1).resize, spec.recipe(weights.IMAGENET1K_V1).crop) == (256, 224)
    assert (spec.recipe(weights.IMAGENET1K_V2).resize, spec.recipe(weights.IMAGENET1K_V2).crop) == (232, 224)


def test_the_user_overrides_any_part_of_the_recipe_and_model_info_says_so():
    embedder = CNNImageEmbedder(
        "resnet18", weights=None, resize_mode="square", resize_size=288, crop_size=256, interpolation="bicubic"
    ).fit()
    recipe = embedder.preprocessing_
    assert (recipe.resize, recipe.crop, recipe.resize_mode, recipe.interpolation) == (288, 256, "square", "bicubic")
    assert embedder.model_info_["input_size"] == [3, 256, 256]
    assert embedder.model_info_["recipe_source"] == (
        "torchvision ResNet18_Weights.IMAGENET1K_V1.transforms(); overridden by resize_mode='square', "
        "resize_size=288, crop_size=256, interpolation='bicubic'"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"interpolation": "cubic"}, "The 'interpolation' parameter of CNNImageEmbedder must be"),
        ({"crop_size": 300}, "need 0 < crop <= resize"),
        ({"resize_size": 0}, "The 'resize_size' parameter of CNNImageEmbedder must be"),
        ({"resize_mode": "fit"}, "The 'resize_mode' parameter of CNNImageEmbedder must be"),
    ],
)
def test_bad_recipe_overrides_are_refused_at_fit(params, message):
    with pytest.raises(ValueError, match=message):
        CNNImageEmbedder("resnet18", weights=None, **params).fit()


# -- multi-scale features --------------------------------------------------------------


def test_multi_scale_adds_pooled_earlier_stages_before_the_final_vector(synthetic_photos):
    from torchvision.models.feature_extraction import create_feature_extractor

    paths = [str(p) for p in synthetic_photos[:3]]
    single = CNNImageEmbedder("mobilenet_v2", weights=None, random_state=0, backend="eager").fit()
    multi = CNNImageEmbedder("mobilenet_v2", weights=None, random_state=0, backend="eager", multi_scale=3).fit()
    names = multi.get_feature_names_out()
    assert multi.n_features_out_ == len(names) == 32 + 96 + 1280
    assert list(names[:2]) == ["img_feature_stage3_0", "img_feature_stage3_1"]
    assert names[32] == "img_feature_stage4_0" and list(names[-1280:]) == list(single.get_feature_names_out())
    features = multi.transform(paths)
    np.testing.assert_allclose(features[:, -1280:], single.transform(paths), rtol=1e-3, atol=1e-5)
    # the stage columns are torchvision's own intermediate outputs (28x28 and 14x14 stage ends), pooled
    stages = create_feature_extractor(single.model_, {"features.6": "stage3", "features.13": "stage4"})
    pixels = torch.from_numpy(np.stack([decode_pixels(p, multi.preprocessing_, None) for p in paths]))
    with torch.no_grad():
        outputs = stages(multi.preprocessing_.normalize(pixels, torch.contiguous_format))
    expected = torch.cat([outputs["stage3"].mean((2, 3)), outputs["stage4"].mean((2, 3))], 1).numpy()
    np.testing.assert_allclose(features[:, :128], expected, rtol=1e-3, atol=1e-5)
    assert multi.model_info_["multi_scale"][-1] == {"stage": 5, "width": 1280, "final": True}


def test_a_multi_scale_network_runs_on_the_default_backend(synthetic_photos):
    # resnet18 at 56 px: the network of the registry quickest to export
    settings = dict(weights=None, random_state=0, multi_scale=3, resize_size=64, crop_size=56)
    multi = CNNImageEmbedder("resnet18", device="cpu", **settings).fit()
    eager = CNNImageEmbedder("resnet18", backend="eager", **settings).fit()
    got, expected = multi.transform(synthetic_photos), eager.transform(synthetic_photos)
    assert type(multi._runner().module).__name__ == "OnnxRuntimeModule"
    assert got.shape == expected.shape == (len(synthetic_photos), 128 + 256 + 512)
    centred = [features - features.mean(0) for features in (got, expected)]  # random weights: compare what varies
    np.testing.assert_allclose(centred[0], centred[1], rtol=1e-3, atol=1e-4)


def test_multi_scale_with_a_timm_model_uses_its_intermediates(synthetic_photos):
    pytest.importorskip("timm")
    paths = [str(p) for p in synthetic_photos[:2]]
    single = CNNImageEmbedder("timm:resnet18", weights=None, random_state=0, backend="eager").fit()
    multi = CNNImageEmbedder("timm:resnet18", weights=None, random_state=0, backend="eager", multi_scale=2).fit()
    assert multi.n_features_out_ == 256 + 512 and multi.get_feature_names_out()[0] == "img_feature_stage4_0"
    np.testing.assert_allclose(multi.transform(paths)[:, 256:], single.transform(paths), rtol=1e-4, atol=1e-6)


def test_multi_scale_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValueError, match="multi_scale is not available for open_clip"):
        multi_scale_network(get_spec("open_clip:ViT-B-32"), None, 2, 224)
    with pytest.raises(ValueError, match="multi_scale=9 but resnet18 has 4 stages"):
        CNNImageEmbedder("resnet18", weights=None, multi_scale=9).fit()
    with pytest.raises(ValueError, match="The 'multi_scale' parameter of CNNImageEmbedder must be"):
        CNNImageEmbedder("resnet18", weights=None, multi_scale=0).fit()
