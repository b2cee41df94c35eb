"""One table from model name to how to build it, where its head is, and its weights.

The feature vector of every model is what its own classification head receives:
the global average pool of the last convolutional stage, flattened. Removing the
head therefore means replacing the head attribute with ``nn.Flatten(1)``; the width
is read from the first ``nn.Linear`` of the head that was removed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .artifact_cache import file_sha256
from .exceptions import WeightsMismatchError

_WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """How to build one torchvision classifier and cut off its head.

    Parameters
    ----------
    name : str
        torchvision's model name (``torchvision.models.get_model``).
    head : str
        Attribute of the model holding the classification head.
    default_weights : str
        Weights used when the user does not choose; ``IMAGENET1K_V1`` everywhere,
        because those are the weights the 256/224 recipe was published with.
    """

    name: str
    head: str
    default_weights: str = "IMAGENET1K_V1"

    def weights_enum(self):
        return torchvision.models.get_model_weights(self.name)

    def build_classifier(self, weights: Any = None) -> nn.Module:
        return torchvision.models.get_model(self.name, weights=weights)

    def head_keys(self, state_dict_keys) -> set[str]:
        return {key for key in state_dict_keys if key.startswith(self.head + ".")}

    def strip_head(self, model: nn.Module) -> tuple[nn.Module, int]:
        """Replace the head by a flatten; return the model and its feature width."""
        head = getattr(model, self.head)
        linear = next(m for m in head.modules() if isinstance(m, nn.Linear))
        setattr(model, self.head, nn.Flatten(1))
        return model, linear.in_features


def _specs() -> dict[str, ModelSpec]:
    families = {
        "classifier": [
            "mobilenet_v2",
            "mobilenet_v3_small",
            "mobilenet_v3_large",
            *(f"efficientnet_b{i}" for i in range(8)),
            "convnext_tiny",
            "convnext_small",
            "convnext_base",
            "convnext_large",
        ],
        "fc": [
            "shufflenet_v2_x0_5",
            "shufflenet_v2_x1_0",
            "shufflenet_v2_x1_5",
            "shufflenet_v2_x2_0",
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
        ],
    }
    return {name: ModelSpec(name, head) for head, names in families.items() for name in names}


MODEL_REGISTRY: dict[str, ModelSpec] = _specs()


def get_spec(model_name: str) -> ModelSpec:
    """The registry entry for ``model_name``, or a ValueError listing the names."""
    try:
        return MODEL_REGISTRY[model_name]
    except (KeyError, TypeError):
        names = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(f"unknown model_name {model_name!r}; choose one of: {names}") from None


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODEL_REGISTRY)


@dataclass(frozen=True)
class BuiltModel:
    """A headless network in eval mode on the CPU, and where its weights came from."""

    module: nn.Module
    n_features: int
    weights: str
    weights_sha256: str | None


def is_weights_file(weights: Any) -> bool:
    """Whether ``weights`` names a local state-dict file rather than torchvision weights."""
    if isinstance(weights, os.PathLike):
        return True
    if not isinstance(weights, str):
        return False
    return os.sep in weights or weights.endswith(_WEIGHT_FILE_SUFFIXES) or os.path.isfile(weights)


def build_model(model_name: str, weights: Any, random_state: int | None = None) -> BuiltModel:
    """Build ``model_name`` headless with ``weights``.

    ``weights`` is a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``, or the
    full ``"MobileNet_V2_Weights.IMAGENET1K_V1"``), None for random initialisation
    (seeded by ``random_state``), or the path of a local state-dict file.
    """
    spec = get_spec(model_name)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            if random_state is not None:
                torch.manual_seed(random_state)
            model = spec.build_classifier(None)
        return _finish(spec, model, "random", None)
    if is_weights_file(weights):
        return _from_file(spec, Path(weights))
    enum_value = resolve_torchvision_weights(spec, weights)
    model = spec.build_classifier(enum_value)
    return _finish(spec, model, str(enum_value), _cached_checkpoint_sha256(enum_value))


def resolve_torchvision_weights(spec: ModelSpec, weights: str):
    """Map a weights name to torchvision's enum member, with a clear error otherwise."""
    enum = spec.weights_enum()
    short = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    if short == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[short]
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(
            f"unknown weights {weights!r} for {spec.name}; use one of {choices}, "
            "None for random weights, or the path of a local state-dict file"
        ) from None


def _finish(spec: ModelSpec, model: nn.Module, weights: str, sha256: str | None) -> BuiltModel:
    module, width = spec.strip_head(model)
    module.eval()
    module.requires_grad_(False)
    return BuiltModel(module, width, weights, sha256)


def _from_file(spec: ModelSpec, path: Path) -> BuiltModel:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    state_dict = _read_state_dict(path)
    model = spec.build_classifier(None)
    expected = model.state_dict()
    check_state_dict(spec, expected, state_dict, source=str(path))
    head = spec.head_keys(expected)
    # The head is removed from the features' network: a fine-tuned head of any size is fine.
    model.load_state_dict({key: value for key, value in state_dict.items() if key not in head}, strict=False)
    return _finish(spec, model, f"file:{path.resolve()}", file_sha256(path))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"cannot read weights file {str(path)!r}: {error}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise ValueError(f"weights file {str(path)!r} holds a {type(loaded).__name__}, not a state dict")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def check_state_dict(spec: ModelSpec, expected: dict, given: dict, source: str) -> None:
    """Raise WeightsMismatchError listing missing, unexpected and mis-shaped keys.

    The head's keys may be absent or of another shape (a fine-tuned head): features never
    use them.
    """
    head = spec.head_keys(expected)
    missing = sorted(set(expected) - set(given) - head)
    unexpected = sorted(set(given) - set(expected) - spec.head_keys(given))
    shapes = sorted(
        f"{key}: file {tuple(given[key].shape)}, model {tuple(expected[key].shape)}"
        for key in (set(expected) & set(given)) - head
        if not hasattr(given[key], "shape") or tuple(given[key].shape) != tuple(expected[key].shape)
    )
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise WeightsMismatchError(
            f"weights file {source!r} does not fit {spec.name}: " + "; ".join(problems)
        )


def _cached_checkpoint_sha256(enum_value) -> str | None:
    filename = os.path.basename(urlparse(enum_value.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return file_sha256(cached) if cached.is_file() else None


def parameters_sha256(module: nn.Module) -> str:
    """A digest of every tensor in the state dict: identifies the network exactly."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
