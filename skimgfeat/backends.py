"""How the headless network is prepared for the device it runs on.

The canonical fitted network (``CNNImageEmbedder.model_``) always stays an eager
module on the CPU, so a pickle never holds device tensors or compiled graphs. What
runs is a copy prepared here, once per (device, backend) and kept out of pickles.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

BACKENDS = ("auto", "eager")


def prepare_module(module: nn.Module, device: torch.device, backend: str) -> nn.Module:
    """A copy of ``module`` ready for inference on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    prepared = copy.deepcopy(module).to(device)
    # NHWC is what oneDNN and cuDNN's tensor-core kernels want, and what our uint8
    # batches already are after the permute in Preprocessing.normalize.
    prepared = prepared.to(memory_format=torch.channels_last)
    return prepared.eval()
