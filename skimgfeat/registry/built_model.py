"""What every model family's builder returns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..engine.preprocessing import Preprocessing


@dataclass(frozen=True)
class BuiltModel:
    """A headless network in eval mode on the CPU, its weights' identity and recipe.

    ``recipe`` is the preprocessing the weights were trained with and ``recipe_source``
    says where it was read (e.g. ``"torchvision ResNet50_Weights.IMAGENET1K_V1.transforms()"``).
    """

    module: nn.Module
    n_features: int
    weights: str
    weights_sha256: str | None
    recipe: Preprocessing
    recipe_source: str
    output: str


@contextmanager
def seeded(random_state: int | None) -> Iterator[None]:
    """Random initialisation seeded by ``random_state``, leaving the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        if random_state is not None:
            torch.manual_seed(random_state)
        yield


def frozen_eval(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


class ParameterGroup(nn.Module):
    """Modules and loose parameters of one block of a network (shared with it, not copied)."""

    def __init__(self, modules: list[nn.Module], parameters: list[nn.Parameter]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(modules)
        self.loose = nn.ParameterList(parameters)

    def absorb(self, other: ParameterGroup) -> None:
        self.layers.extend(other.layers)
        self.loose.extend(other.loose)

    def forward(self, *args):
        raise TypeError("a parameter group is not run on its own: run the whole model")
