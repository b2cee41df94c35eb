"""OpenCLIP image towers: ``model_name="open_clip:<arch>"``, features are ``encode_image``.

Only the visual tower is kept (``model.visual``: what ``encode_image`` runs, without its
optional L2 normalisation), so a fitted embedder pickles without the text tower. The
recipe is OpenCLIP's validation transform, read from the model's preprocess config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..engine.preprocessing import Preprocessing
from .built_model import BuiltModel, ParameterGroup, frozen_eval, seeded
from .optional import import_optional
from .weights_files import check_state_dict, file_sha256, is_weights_file, read_state_dict

PREFIX = "open_clip:"
PRETRAINED_NAMES = ("pretrained", "DEFAULT")
# "pretrained" for these architectures: the LAION-2B weights OpenCLIP's README recommends;
# other architectures get the first tag OpenCLIP lists for them.
DEFAULT_TAGS = {
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
    "ViT-H-14": "laion2b_s32b_b79k",
}
_RESIZE_MODES = {"shortest": "shorter_side", "squash": "square"}


@dataclass(frozen=True)
class OpenClipModel:
    """An OpenCLIP architecture name (``open_clip.list_models()``)."""

    name: str

    family = "open_clip"
    output = "OpenCLIP encode_image (the visual tower's projected embedding, not L2-normalised)"

    def default_tag(self) -> str:
        open_clip = import_optional("open_clip")
        tags = open_clip.list_pretrained_tags_by_model(self.name)
        if self.name in DEFAULT_TAGS:
            return DEFAULT_TAGS[self.name]
        if not tags:
            raise ValueError(f"OpenCLIP lists no pretrained weights for {self.name!r}; pass weights=PATH or None")
        return tags[0]

    def create(self, pretrained: str | None) -> nn.Module:
        open_clip = import_optional("open_clip")
        if self.name not in open_clip.list_models():
            raise ValueError(f"unknown OpenCLIP architecture {self.name!r}; see open_clip.list_models()")
        if pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(self.name):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(self.name))
            raise ValueError(
                f"unknown weights {pretrained!r} for open_clip:{self.name}; use 'pretrained', one of the tags "
                f"{tags}, None for random weights, or the path of a local state-dict file"
            )
        try:
            return open_clip.create_model(self.name, pretrained=pretrained)
        except RuntimeError as error:
            if pretrained is not None and "download" in str(error).lower():
                raise OSError(f"cannot get OpenCLIP weights {pretrained!r} for {self.name}: {error}") from error
            raise

    def recipe(self, model: nn.Module) -> Preprocessing:
        open_clip = import_optional("open_clip")
        config = open_clip.get_model_preprocess_cfg(model)
        size = config["size"]
        height, width = (size, size) if isinstance(size, int) else size
        resize_mode = config.get("resize_mode", "shortest")
        if height != width or resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"open_clip:{self.name} preprocesses to {height}x{width} with resize_mode={resize_mode!r}, "
                "which skimgfeat does not reproduce; pass resize_mode='shorter_side' or 'square' to choose"
            )
        return Preprocessing(
            resize=height,
            crop=height,
            resize_mode=_RESIZE_MODES[resize_mode],
            interpolation=config.get("interpolation", "bicubic"),
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
        )

    def blocks(self, visual: nn.Module) -> list[nn.Module]:
        """Stem (patch conv, class and position embeddings, pre-norm), each residual block,
        and post-norm + projection joined to the last: parameter groups, not run in sequence."""
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise NotImplementedError(f"blocks of open_clip:{self.name} ({type(visual).__name__}) are not defined")
        resblocks = list(visual.transformer.resblocks)
        stem = ParameterGroup(
            [visual.conv1, visual.ln_pre], [visual.class_embedding, visual.positional_embedding]
        )
        tail = [visual.ln_post] + [visual.get_submodule(name) for name in ("attn_pool",) if hasattr(visual, name)]
        last = ParameterGroup([resblocks[-1], *filter(None, tail)], [p for p in [visual.proj] if p is not None])
        return [stem, *(ParameterGroup([block], []) for block in resblocks[:-1]), last]


def build(entry: OpenClipModel, weights: Any, random_state: int | None) -> BuiltModel:
    """The visual tower of ``entry``: a pretrained tag, "pretrained", a local file, or None."""
    if weights is None:
        with seeded(random_state):
            model = entry.create(None)
        return _finish(entry, model, "random", None)
    if is_weights_file(weights):
        path = Path(weights)
        with seeded(0):
            model = entry.create(None)
        state_dict = read_state_dict(path)
        if any(key.startswith("visual.") for key in state_dict):
            state_dict = {key.removeprefix("visual."): value for key, value in state_dict.items()
                          if key.startswith("visual.")}
        check_state_dict(f"open_clip:{entry.name} (visual tower)", model.visual.state_dict(), state_dict, str(path))
        model.visual.load_state_dict(state_dict)
        return _finish(entry, model, f"file:{path.resolve()}", file_sha256(path))
    tag = entry.default_tag() if weights in PRETRAINED_NAMES else str(weights)
    model = entry.create(tag)
    return _finish(entry, model, f"open_clip:{entry.name}/{tag}", None)


def _finish(entry: OpenClipModel, model: nn.Module, weights: str, sha256: str | None) -> BuiltModel:
    recipe = entry.recipe(model)
    visual = model.visual
    return BuiltModel(
        module=frozen_eval(visual),
        n_features=int(visual.output_dim),
        weights=weights,
        weights_sha256=sha256,
        recipe=recipe,
        recipe_source=f"OpenCLIP preprocess config of {entry.name} (validation transform)",
        output=entry.output,
    )
