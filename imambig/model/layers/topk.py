"""Top-k sparsifier: keep the k entries of largest magnitude, with their signs."""

from __future__ import annotations

import torch
from torch import nn


def topk_sparsify(h: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the ``k`` largest-magnitude entries along the last dim.

    Gradients flow to the kept entries only (gather/scatter are differentiable),
    which is what lets the encoder learn which coordinates to fire.
    """
    if k >= h.shape[-1]:
        return h
    idx = h.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(h).scatter(-1, idx, h.gather(-1, idx))


def topk_support(z: torch.Tensor) -> torch.Tensor:
    """Boolean support mask of a sparse code."""
    return z != 0


class TopK(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return topk_sparsify(h, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"
