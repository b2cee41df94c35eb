"""timm models: ``model_name="timm:<name>"``, features are timm's pooled pre-logits.

The network is created with ``num_classes=0`` (timm's own way of removing the
classifier: what remains ends in the pooling and pre-logits layers), and the recipe
is the model's ``pretrained_cfg`` as ``timm.data.resolve_data_config`` reads it:
``input_size``, ``crop_pct`` (resize to ``floor(size / crop_pct)``), ``crop_mode``,
``interpolation``, ``mean``, ``std``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..engine.preprocessing import Preprocessing
from .built_model import BuiltModel, ParameterGroup, frozen_eval, seeded
from .optional import import_optional
from .weights_files import file_sha256, is_weights_file, load_checked

PREFIX = "timm:"
PRETRAINED_NAMES = ("pretrained", "DEFAULT")
_CROP_MODES = {"center": "shorter_side", None: "shorter_side", "squash": "square"}


@dataclass(frozen=True)
class TimmModel:
    """A timm model name, optionally with its pretrained tag (``convnext_tiny.fb_in22k``)."""

    name: str

    family = "timm"
    output = "timm's pooled pre-logits (the classifier's input, num_classes=0)"

    def create(self, pretrained: bool) -> nn.Module:
        timm = import_optional("timm")
        try:
            return timm.create_model(self.name, pretrained=pretrained, num_classes=0)
        except RuntimeError as error:
            if "Unknown model" in str(error) or "Invalid pretrained tag" in str(error):
                raise ValueError(f"unknown timm model {self.name!r}: {error}") from None
            raise

    def recipe(self, model: nn.Module) -> Preprocessing:
        timm = import_optional("timm")
        config = timm.data.resolve_data_config(model=model)
        channels, height, width = config["input_size"]
        if height != width:
            raise ValueError(f"timm:{self.name} expects {height}x{width} inputs; only square inputs are supported")
        crop_mode = config.get("crop_mode")
        if crop_mode not in _CROP_MODES:
            raise ValueError(
                f"timm:{self.name} uses crop_mode={crop_mode!r}, which skimgfeat does not reproduce; "
                "pass resize_mode='shorter_side' or 'square' to choose a center crop instead"
            )
        crop_pct = config.get("crop_pct") or timm.data.DEFAULT_CROP_PCT
        return Preprocessing(
            resize=math.floor(height / crop_pct),
            crop=height,
            resize_mode=_CROP_MODES[crop_mode],
            interpolation=config["interpolation"],
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
        )

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """timm's own coarse parameter groups (``group_matcher(coarse=True)``), input side first.

        Each block holds the modules and loose parameters (class token, position
        embedding) of one group, shared with the model: freezing a block freezes them in
        the model. A trailing group of normalisation layers only (the final norm) joins
        the block before it. These blocks group parameters; they are not run in sequence.
        """
        from timm.models import group_modules, group_parameters

        matcher = model.group_matcher(coarse=True)
        module_groups = group_modules(model, matcher)
        parameter_groups = group_parameters(model, matcher)
        blocks = []
        for group in sorted(parameter_groups):
            block = ParameterGroup(
                [model.get_submodule(name) for name in module_groups.get(group, [])],
                [model.get_parameter(name) for name in parameter_groups[group] if "." not in name],
            )
            if blocks and _only_normalisation(block):
                blocks[-1].absorb(block)
            else:
                blocks.append(block)
        return blocks


def _only_normalisation(block: ParameterGroup) -> bool:
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    return len(block.loose) == 0 and all(isinstance(layer, norms) for layer in block.layers)


def build(entry: TimmModel, weights: Any, random_state: int | None) -> BuiltModel:
    """``entry`` with num_classes=0 and ``weights``: "pretrained"/"DEFAULT", a local file, or None."""
    if weights in PRETRAINED_NAMES:
        model = entry.create(pretrained=True)
        tag = model.pretrained_cfg.get("tag") or ""
        identity = f"timm:{model.pretrained_cfg.get('architecture', entry.name)}.{tag}".rstrip(".")
        return _finish(entry, model, identity, None)
    if weights is None:
        with seeded(random_state):
            model = entry.create(pretrained=False)
        return _finish(entry, model, "random", None)
    if not is_weights_file(weights):
        raise ValueError(
            f"unknown weights {weights!r} for timm:{entry.name}; use 'pretrained' (timm's weights for the "
            "name's tag), None for random weights, or the path of a local state-dict file"
        )
    path = Path(weights)
    with seeded(0):
        model = entry.create(pretrained=False)
    classifier = model.pretrained_cfg.get("classifier") or "head"
    classifiers = [classifier] if isinstance(classifier, str) else list(classifier)
    load_checked(model, f"timm:{entry.name}", path, optional_prefixes=[name + "." for name in classifiers])
    return _finish(entry, model, f"file:{path.resolve()}", file_sha256(path))


def _finish(entry: TimmModel, model: nn.Module, weights: str, sha256: str | None) -> BuiltModel:
    return BuiltModel(
        module=frozen_eval(model),
        n_features=int(getattr(model, "head_hidden_size", None) or model.num_features),
        weights=weights,
        weights_sha256=sha256,
        recipe=entry.recipe(model),
        recipe_source=f"timm resolve_data_config of {entry.name} (pretrained_cfg)",
        output=entry.output,
    )
