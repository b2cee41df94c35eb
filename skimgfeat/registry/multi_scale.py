"""Multi-scale features: the globally pooled outputs of earlier stages beside the final vector.

A stage is a run of blocks at one spatial resolution. With ``n_stages=N`` the network
returns, concatenated, the global average pool of the outputs of the N-1 stages before
the last one, then the usual final feature vector (which already summarises the last
stage). torchvision models run their registry blocks in sequence; timm models use their
own ``forward_intermediates``. OpenCLIP towers have no stages here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StageColumns:
    """``width`` feature columns from stage ``stage`` (1 = nearest the input); final=True for the final vector."""

    stage: int
    width: int
    final: bool = False


class TorchvisionMultiScale(nn.Module):
    """Runs the blocks in order, pooling the outputs of the tapped ones; the last block gives the final vector."""

    def __init__(self, blocks: list[nn.Module], taps: list[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.taps = list(taps)

    def extra_repr(self) -> str:
        # In the repr, hence in every key made from it (the ONNX graph's artifact-cache name):
        # two taps over the same parameters are two networks.
        return f"taps={self.taps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                pooled.append(x.mean((2, 3)))
        return torch.cat([*pooled, x], dim=1)


class TimmMultiScale(nn.Module):
    """timm's ``forward_intermediates`` for the last ``n_stages`` stages, then its pooled pre-logits."""

    def __init__(self, model: nn.Module, n_stages: int) -> None:
        super().__init__()
        self.model = model
        self.n_stages = n_stages

    def extra_repr(self) -> str:
        return f"n_stages={self.n_stages}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final, intermediates = self.model.forward_intermediates(x, indices=self.n_stages, output_fmt="NCHW")
        pooled = [stage.mean((2, 3)) for stage in intermediates[:-1]]
        return torch.cat([*pooled, self.model.forward_head(final, pre_logits=True)], dim=1)


def multi_scale_network(spec, module: nn.Module, n_stages: int, side: int) -> tuple[nn.Module, list[StageColumns]]:
    """``module`` returning the pooled outputs of ``n_stages - 1`` stages and the final vector.

    ``side`` is the input size used to find where the resolution changes.
    """
    builders = {"torchvision": _torchvision, "timm": _timm}
    if spec.family not in builders:
        raise ValueError(f"multi_scale is not available for {spec.family} models; use multi_scale=1")
    with torch.no_grad():
        return builders[spec.family](spec, module, n_stages, side)


def _torchvision(spec, module, n_stages, side):
    blocks = spec.blocks(module)
    x = torch.zeros(1, 3, side, side)
    sizes, widths = [], []
    for block in blocks[:-1]:
        x = block(x)
        sizes.append(tuple(x.shape[2:]))
        widths.append(x.shape[1])
    sizes.append(tuple(blocks[-1][0](x).shape[2:]))  # the last block's body, before pooling
    stage_ends = [i for i in range(len(blocks) - 1) if sizes[i] != sizes[i + 1]]
    _check_count(spec, n_stages, len(stage_ends) + 1)
    taps = stage_ends[len(stage_ends) - (n_stages - 1):]
    final_width = blocks[-1](x).shape[1]
    columns = [StageColumns(stage_ends.index(i) + 1, widths[i]) for i in taps]
    columns.append(StageColumns(len(stage_ends) + 1, final_width, final=True))
    return TorchvisionMultiScale(blocks, taps).eval(), columns


def _timm(spec, module, n_stages, side):
    if not hasattr(module, "forward_intermediates"):
        raise ValueError(f"timm:{spec.name} has no forward_intermediates; use multi_scale=1")
    total = len(module.feature_info) if hasattr(module, "feature_info") else n_stages
    _check_count(spec, n_stages, total)
    network = TimmMultiScale(module, n_stages).eval()
    _, intermediates = module.forward_intermediates(torch.zeros(1, 3, side, side), indices=n_stages)
    first = total - n_stages + 1
    columns = [StageColumns(first + k, stage.shape[1]) for k, stage in enumerate(intermediates[:-1])]
    final_width = network(torch.zeros(1, 3, side, side)).shape[1] - sum(column.width for column in columns)
    columns.append(StageColumns(total, final_width, final=True))
    return network, columns


def _check_count(spec, n_stages: int, available: int) -> None:
    if n_stages > available:
        raise ValueError(f"multi_scale={n_stages} but {spec.name} has {available} stages")


def stage_feature_names(columns: list[StageColumns], prefix: str) -> list[str]:
    """``img_feature_stage3_0 ...`` for earlier stages, the usual ``img_feature_0 ...`` for the final vector."""
    names = []
    for column in columns:
        stem = prefix if column.final else f"{prefix}stage{column.stage}_"
        names += [f"{stem}{i}" for i in range(column.width)]
    return names
