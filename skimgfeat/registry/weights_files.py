"""Local weights files: recognising, reading, checking and hashing them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..exceptions import WeightsMismatchError
from ..storage.artifact_cache import file_sha256, parameters_sha256  # noqa: F401 - the registry's names

_WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def is_weights_file(weights: Any) -> bool:
    """Whether ``weights`` names a local state-dict file rather than a weights name or tag."""
    if isinstance(weights, os.PathLike):
        return True
    if not isinstance(weights, str):
        return False
    return os.sep in weights or weights.endswith(_WEIGHT_FILE_SUFFIXES) or os.path.isfile(weights)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, unwrapped from ``{"state_dict": ...}`` checkpoints and DataParallel prefixes."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"cannot read weights file {str(path)!r}: {error}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise ValueError(f"weights file {str(path)!r} holds a {type(loaded).__name__}, not a state dict")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def check_state_dict(
    name: str, expected: dict, given: dict, source: str, optional_prefixes: Iterable[str] = ()
) -> None:
    """Raise WeightsMismatchError listing missing, unexpected and mis-shaped keys.

    Keys under ``optional_prefixes`` (the classifier that features never use) may be
    absent, extra or of another shape (a fine-tuned head of any size).
    """
    prefixes = tuple(optional_prefixes)

    def optional(key: str) -> bool:
        return bool(prefixes) and key.startswith(prefixes)

    missing = sorted(key for key in set(expected) - set(given) if not optional(key))
    unexpected = sorted(key for key in set(given) - set(expected) if not optional(key))
    shapes = sorted(
        f"{key}: file {tuple(given[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(expected) & set(given)
        if not optional(key)
        and (not hasattr(given[key], "shape") or tuple(given[key].shape) != tuple(expected[key].shape))
    )
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise WeightsMismatchError(f"weights file {source!r} does not fit {name}: " + "; ".join(problems))


def load_checked(model: nn.Module, name: str, path: Path, optional_prefixes: Iterable[str] = ()) -> None:
    """Load the state dict in ``path`` into ``model``, leaving out the optional (head) keys."""
    state_dict = read_state_dict(path)
    prefixes = tuple(optional_prefixes)
    check_state_dict(name, model.state_dict(), state_dict, str(path), prefixes)
    kept = {key: value for key, value in state_dict.items() if not (prefixes and key.startswith(prefixes))}
    model.load_state_dict(kept, strict=False)


def cached_file_sha256(path: Path) -> str | None:
    """The sha256 of a downloaded file if it is in a local cache, else None."""
    return file_sha256(path) if path.is_file() else None
