"""torchvision classifiers: how to build each, where its final Linear is, its blocks and recipe.

The features of every model are exactly the input of its final ``nn.Linear``: the head
keeps everything before that layer (mobilenet_v3's Linear + Hardswish, convnext's
LayerNorm2d) and loses only the Linear itself. The recipe is that of the weights
(``WeightsEnum.transforms()``), with the resize mode the model's tradition asks for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from ..engine.preprocessing import Preprocessing
from .built_model import BuiltModel, frozen_eval, seeded
from .weights_files import cached_file_sha256, file_sha256, is_weights_file, load_checked

PRETRAINED = "pretrained"
DEFAULT_WEIGHTS = "IMAGENET1K_V1"


@dataclass(frozen=True)
class TorchvisionModel:
    """One torchvision classifier in the registry.

    Parameters
    ----------
    name : str
        torchvision's model name (``torchvision.models.get_model``).
    head : str
        Attribute holding the classification head (an ``nn.Linear`` or an
        ``nn.Sequential`` ending in one).
    layout : {"features", "resnet", "shufflenet"}
        How the network splits into blocks (see :meth:`blocks`).
    resize_mode : {"shorter_side", "square"}
        How the weights' resize size is applied by default. ``"square"`` for
        mobilenet_v2 and shufflenet_v2_x1_0: the original module's recipe (256x256 ->
        224), kept as their default; torchvision's own is ``"shorter_side"``.
    flatten_before_head : bool
        Whether the forward pass flattens the pooled map before the head (False for
        convnext, whose head starts with a LayerNorm2d on the pooled map).
    default_weights : str
        The weights ``weights="pretrained"`` means, and whose recipe a local weights
        file gets.
    """

    name: str
    head: str
    layout: str
    resize_mode: str = "shorter_side"
    flatten_before_head: bool = True
    default_weights: str = DEFAULT_WEIGHTS

    family = "torchvision"
    output = "the input of the classifier's final Linear layer (global average pool, then the head's earlier layers)"

    def weights_enum(self):
        return torchvision.models.get_model_weights(self.name)

    def resolve_weights(self, weights: Any):
        """A weights enum member from a name, a full ``Enum.MEMBER`` name or a member."""
        enum = self.weights_enum()
        if weights == PRETRAINED:
            weights = self.default_weights
        try:
            return enum.verify(weights)
        except (KeyError, TypeError):
            choices = ", ".join([PRETRAINED, *enum.__members__])
            raise ValueError(
                f"unknown weights {weights!r} for {self.name}; use one of {choices}, "
                "None for random weights, or the path of a local state-dict file"
            ) from None

    def build_classifier(self, weights: Any = None) -> nn.Module:
        return torchvision.models.get_model(self.name, weights=weights)

    def final_linear_name(self, model: nn.Module) -> str:
        head = getattr(model, self.head)
        if isinstance(head, nn.Linear):
            return self.head
        last = len(head) - 1
        if not isinstance(head[last], nn.Linear):
            raise TypeError(f"{self.name}.{self.head} does not end in a Linear layer")
        return f"{self.head}.{last}"

    def strip_head(self, model: nn.Module) -> tuple[nn.Module, int]:
        """Remove the final Linear; return the model (features out) and its width."""
        head = getattr(model, self.head)
        if isinstance(head, nn.Linear):
            setattr(model, self.head, nn.Identity())
            return model, head.in_features
        linear = model.get_submodule(self.final_linear_name(model))
        setattr(model, self.head, nn.Sequential(*list(head)[:-1]))
        return model, linear.in_features

    def recipe(self, weights_member) -> Preprocessing:
        """The preprocessing of ``weights_member`` (an enum member), in this model's resize mode."""
        transform = weights_member.transforms()
        return Preprocessing(
            resize=int(transform.resize_size[0]),
            crop=int(transform.crop_size[0]),
            resize_mode=self.resize_mode,
            interpolation=transform.interpolation.value,
            mean=tuple(transform.mean),
            std=tuple(transform.std),
        )

    def recipe_source(self, weights_member) -> str:
        source = f"torchvision {weights_member}.transforms()"
        if self.resize_mode == "square":
            source += ", resized square as the original module did"
        return source

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The headless network as an ordered list of blocks, input side first.

        Running them in order on a normalised batch gives the features (up to float
        rounding): the last block ends with the pooling and the kept part of the head.
        """
        body = _LAYOUTS[self.layout](model)
        tail = [nn.AdaptiveAvgPool2d(1)]
        if self.flatten_before_head:
            tail.append(nn.Flatten(1))
        tail.append(getattr(model, self.head))
        if not self.flatten_before_head:
            tail.append(nn.Flatten(1))
        return [*body[:-1], nn.Sequential(body[-1], *tail)]


def _features_layout(model: nn.Module) -> list[nn.Module]:
    return list(model.features.children())


def _resnet_layout(model: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def _shufflenet_layout(model: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(model.conv1, model.maxpool)
    return [stem, model.stage2, model.stage3, model.stage4, model.conv5]


_LAYOUTS: dict[str, Callable[[nn.Module], list[nn.Module]]] = {
    "features": _features_layout,
    "resnet": _resnet_layout,
    "shufflenet": _shufflenet_layout,
}


def _registry() -> dict[str, TorchvisionModel]:
    entries = [
        TorchvisionModel("mobilenet_v2", "classifier", "features", resize_mode="square"),
        TorchvisionModel("mobilenet_v3_small", "classifier", "features"),
        TorchvisionModel("mobilenet_v3_large", "classifier", "features"),
        *(TorchvisionModel(f"efficientnet_b{i}", "classifier", "features") for i in range(8)),
        *(
            TorchvisionModel(f"convnext_{size}", "classifier", "features", flatten_before_head=False)
            for size in ("tiny", "small", "base", "large")
        ),
        TorchvisionModel("shufflenet_v2_x0_5", "fc", "shufflenet"),
        TorchvisionModel("shufflenet_v2_x1_0", "fc", "shufflenet", resize_mode="square"),
        TorchvisionModel("shufflenet_v2_x1_5", "fc", "shufflenet"),
        TorchvisionModel("shufflenet_v2_x2_0", "fc", "shufflenet"),
        *(TorchvisionModel(f"resnet{depth}", "fc", "resnet") for depth in (18, 34, 50, 101, 152)),
    ]
    return {entry.name: entry for entry in entries}


TORCHVISION_MODELS: dict[str, TorchvisionModel] = _registry()


def cached_checkpoint(weights_member) -> Path:
    """Where torchvision keeps the downloaded file of ``weights_member``."""
    filename = os.path.basename(urlparse(weights_member.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def build(entry: TorchvisionModel, weights: Any, random_state: int | None) -> BuiltModel:
    """``entry`` headless with ``weights``: a name or enum member, a local file, or None."""
    if weights is None:
        member = entry.resolve_weights(PRETRAINED)
        with seeded(random_state):
            model = entry.build_classifier(None)
        return _finish(entry, model, member, "random", None)
    if is_weights_file(weights):
        path = Path(weights)
        member = entry.resolve_weights(PRETRAINED)
        model = entry.build_classifier(None)
        load_checked(model, entry.name, path, optional_prefixes=[entry.final_linear_name(model) + "."])
        return _finish(entry, model, member, f"file:{path.resolve()}", file_sha256(path))
    member = entry.resolve_weights(weights)
    model = entry.build_classifier(member)
    return _finish(entry, model, member, str(member), cached_file_sha256(cached_checkpoint(member)))


def _finish(entry: TorchvisionModel, model: nn.Module, member, weights: str, sha256: str | None) -> BuiltModel:
    module, width = entry.strip_head(model)
    return BuiltModel(
        module=frozen_eval(module),
        n_features=width,
        weights=weights,
        weights_sha256=sha256,
        recipe=entry.recipe(member),
        recipe_source=entry.recipe_source(member),
        output=entry.output,
    )
