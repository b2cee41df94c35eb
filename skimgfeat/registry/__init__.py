"""One registry from model name to how to build it, its weights, recipe and blocks.

Three families share one interface (``build`` -> :class:`BuiltModel`, ``blocks``):

* torchvision classifiers by name (``"mobilenet_v2"``, ``"resnet50"``, ...; see
  :data:`MODEL_REGISTRY`), features = the input of the final Linear layer;
* ``"timm:<name>"`` for any timm model, features = timm's pooled pre-logits;
* ``"open_clip:<arch>"`` for OpenCLIP image towers, features = ``encode_image``.

Each family brings the preprocessing recipe of its weights (``BuiltModel.recipe``).
timm and OpenCLIP are imported only when one of their models is built.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import open_clip_models, timm_models, torchvision_models
from .built_model import BuiltModel
from .open_clip_models import OpenClipModel
from .timm_models import TimmModel
from .torchvision_models import PRETRAINED, TORCHVISION_MODELS, TorchvisionModel
from .weights_files import check_state_dict, file_sha256, is_weights_file, parameters_sha256, read_state_dict

#: Every torchvision model name :class:`~skimgfeat.CNNImageEmbedder` accepts, mapped to its
#: builder, default weights and feature width (:func:`~skimgfeat.list_models` lists the names).
MODEL_REGISTRY: dict[str, TorchvisionModel] = TORCHVISION_MODELS
DEFAULT_WEIGHTS = PRETRAINED
FAMILIES = {timm_models.PREFIX: TimmModel, open_clip_models.PREFIX: OpenClipModel}

__all__ = [
    "BuiltModel",
    "DEFAULT_WEIGHTS",
    "MODEL_REGISTRY",
    "build_model",
    "check_state_dict",
    "file_sha256",
    "get_spec",
    "is_weights_file",
    "list_models",
    "network_blocks",
    "parameters_sha256",
    "read_state_dict",
]


def get_spec(model_name: str):
    """The registry entry for ``model_name``, or a ValueError saying how to name models."""
    for prefix, family in FAMILIES.items():
        if isinstance(model_name, str) and model_name.startswith(prefix) and len(model_name) > len(prefix):
            return family(model_name.removeprefix(prefix))
    try:
        return MODEL_REGISTRY[model_name]
    except (KeyError, TypeError):
        names = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(
            f"unknown model_name {model_name!r}; choose one of: {names}; "
            "or 'timm:<name>' for a timm model, 'open_clip:<arch>' for an OpenCLIP image tower"
        ) from None


def list_models() -> list[str]:
    """Registered torchvision model names, sorted (timm and OpenCLIP models are named by prefix)."""
    return sorted(MODEL_REGISTRY)


def build_model(model_name: str, weights: Any = PRETRAINED, random_state: int | None = None) -> BuiltModel:
    """Build ``model_name`` headless with ``weights``, with its preprocessing recipe.

    ``weights`` is ``"pretrained"`` (the registry's default pretrained weights for the
    model), a weights name of the family (torchvision: ``"IMAGENET1K_V1"``, ``"DEFAULT"``,
    ``"MobileNet_V2_Weights.IMAGENET1K_V1"`` or the enum member; OpenCLIP: a pretrained
    tag), None for random initialisation (seeded by ``random_state``), or the path of a
    local state-dict file.
    """
    spec = get_spec(model_name)
    return _BUILDERS[spec.family](spec, weights, random_state)


def network_blocks(model_name: str, module: nn.Module) -> list[nn.Module]:
    """The blocks of a headless network built by :func:`build_model`, input side first.

    Fine-tuning "the last N blocks" means ``network_blocks(name, model)[-N:]``. Every
    parameter of the network is in exactly one block, and the blocks share their
    parameters with ``module`` (freezing a block freezes it in the network)::

        embedder = CNNImageEmbedder("resnet50").fit()
        blocks = network_blocks(embedder.model_name, embedder.model_)

    torchvision: mobilenet/efficientnet/convnext: the children of ``features``;
    resnet: stem (conv1, bn1, relu, maxpool), layer1 ... layer4; shufflenet: stem
    (conv1, maxpool), stage2 ... stage4, conv5. The last block also holds the pooling and
    the part of the head the features keep (mobilenet_v3's Linear + Hardswish, convnext's
    LayerNorm2d), so ``nn.Sequential(*blocks)`` run on a normalised batch gives the
    features (up to float rounding).

    timm: the model's coarse parameter groups (``group_matcher(coarse=True)``: stem,
    stages or transformer blocks, final norm joined to the last); OpenCLIP ViT towers:
    stem, each residual block, post-norm and projection joined to the last. These group
    parameters and are not run in sequence.
    """
    return get_spec(model_name).blocks(module)


_BUILDERS = {
    "torchvision": torchvision_models.build,
    "timm": timm_models.build,
    "open_clip": open_clip_models.build,
}
