"""Grouped linear maps: L independent bias-free maps R^n -> R^m in one batched op."""

from __future__ import annotations

import math

import torch
from torch import nn


class GroupedLinear(nn.Module):
    """``L`` bias-free linear maps held in one ``(L, m, n)`` weight tensor.

    ``forward`` applies map ``l`` to group ``l`` of a ``(B, L, n)`` input, giving
    ``(B, L, m)``; ``transpose`` applies the same weights transposed, ``(B, L, m) ->
    (B, L, n)``, which is the tied decoder. Both are a single einsum (one batched GEMM)
    rather than a Python loop over groups.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.groups = groups
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Unit-variance outputs for unit-variance inputs; the decoder direction sees
        # only k of m inputs, and the surrounding 1x1 convs absorb the scale.
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bln,lmn->blm", x, self.weight)

    def transpose(self, z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("blm,lmn->bln", z, self.weight)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in={self.in_features}, out={self.out_features}"


class LoopGroupedLinear(GroupedLinear):
    """Reference implementation with one ``F.linear`` per group (for tests and benchmarks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [torch.nn.functional.linear(x[:, g], self.weight[g]) for g in range(self.groups)],
            dim=1,
        )

    def transpose(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [torch.nn.functional.linear(z[:, g], self.weight[g].t()) for g in range(self.groups)],
            dim=1,
        )
