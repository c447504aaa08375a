"""Down- and up-sampling blocks of the sparse autoencoder (SYSTEM.md, "Network").

Type I blocks form the main chain; type II blocks are per-level skips that jump
straight between a level's resolution and the bottleneck.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)


class DownChain(nn.Module):
    """Type I: 3x3 conv -> lrelu -> grouped 5x5 conv (stride s) -> BN, plus a strided 1x1
    residual; sum -> lrelu."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.conv1 = _conv(cin, cout, 3)
        self.conv2 = _conv(cout, cout, 5, stride=stride, groups=groups)
        self.norm = nn.BatchNorm2d(cout)
        self.residual = _conv(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv2(F.leaky_relu(self.conv1(x), self.slope)))
        return F.leaky_relu(y + self.residual(x), self.slope)


class DownSkip(nn.Module):
    """Type II: 3x3 conv -> lrelu -> 5x5 conv -> 1x1 conv (stride = remaining down-scale)
    -> BN, plus a strided 1x1 residual; sum -> lrelu."""

    def __init__(self, cin: int, cout: int, stride: int, slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.conv1 = _conv(cin, cin, 3)
        self.conv2 = _conv(cin, cin, 5)
        self.conv3 = _conv(cin, cout, 1, stride=stride)
        self.norm = nn.BatchNorm2d(cout)
        self.residual = _conv(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.leaky_relu(self.conv1(x), self.slope))
        y = self.norm(self.conv3(y))
        return F.leaky_relu(y + self.residual(x), self.slope)


class _Up(nn.Module):
    """Shared shape of both up blocks: bilinear up-sampling, then
    conv1 -> norm -> lrelu -> conv2, plus a 1x1 residual of the up-sampled input."""

    conv1: nn.Conv2d
    norm: nn.GroupNorm
    conv2: nn.Conv2d
    residual: nn.Conv2d

    def __init__(self, scale: int, slope: float) -> None:
        super().__init__()
        self.scale = scale
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        y = self.conv2(F.leaky_relu(self.norm(self.conv1(x)), self.slope))
        return y + self.residual(x)


class UpChain(_Up):
    """Type I up: bilinear x s -> (5x5 conv in->out -> GroupNorm(1) -> lrelu -> 3x3 conv)
    + 1x1 residual. No BatchNorm when up-sampling (it hurt in the reference). Changing
    channels in the 5x5 (not the 3x3) gives the published 3.28 M parameters and 3.2 GFLOP
    decoder."""

    def __init__(self, cin: int, cout: int, scale: int, slope: float) -> None:
        super().__init__(scale, slope)
        self.conv1 = _conv(cin, cout, 5)
        self.norm = nn.GroupNorm(1, cout)
        self.conv2 = _conv(cout, cout, 3)
        self.residual = _conv(cin, cout, 1)


class UpSkip(_Up):
    """Type II up: bilinear x (cumulative factor) -> (3x3 conv -> GroupNorm(one group per
    channel) -> lrelu -> 1x1 conv) + 1x1 residual."""

    def __init__(self, cin: int, cout: int, scale: int, slope: float) -> None:
        super().__init__(scale, slope)
        self.conv1 = _conv(cin, cin, 3)
        self.norm = nn.GroupNorm(cin, cin)
        self.conv2 = _conv(cin, cout, 1)
        self.residual = _conv(cin, cout, 1)
