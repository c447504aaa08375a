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


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (1x1, stride s, no padding) as sub-sampling, then a 1x1 convolution: the
    same sums. oneDNN's own strided 1x1 corrupts the heap in its weight gradient on AVX2
    CPUs with one thread (torch 2.13, 3 input channels: tests/test_model.py), and
    sub-sampling first skips the pixels the stride drops anyway."""
    s = conv.stride[0]
    return F.conv2d(x[:, :, ::s, ::s] if s > 1 else x, conv.weight, conv.bias)


def _bn_scale(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as y * scale + shift."""
    assert norm.running_var is not None and norm.running_mean is not None
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


# Inference runs each down block in a folded form: BatchNorm (running statistics) folded
# into the convolution before it and, in the skip, the 5x5 and strided 1x1 convolutions
# (nothing non-linear between them) composed into one strided 5x5 convolution, so the
# 5x5 is evaluated only where the stride samples it. That removes about half of the
# encoder's arithmetic (paper: 4.16 -> 2.05 GFLOP per image). Same function; float
# rounding differs (~1e-6 relative), as with another torch build or kernel, so a support
# entry on a near-tie may differ from the unfolded form's. Training runs the plain form:
# BatchNorm needs its batch statistics there.


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
        return self._folded(x) if not self.training else self._plain(x)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv2(F.leaky_relu(self.conv1(x), self.slope)))
        return F.leaky_relu(y + pointwise(self.residual, x), self.slope)

    def _folded(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = _bn_scale(self.norm)
        w = self.conv2.weight * scale[:, None, None, None]
        b = self.conv2.bias * scale + shift
        y = F.leaky_relu(self.conv1(x), self.slope, inplace=True)
        y = F.conv2d(y, w, b, self.conv2.stride, self.conv2.padding, groups=self.conv2.groups)
        return F.leaky_relu(y.add_(pointwise(self.residual, x)), self.slope, inplace=True)


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
        return self._folded(x) if not self.training else self._plain(x)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.leaky_relu(self.conv1(x), self.slope))
        y = self.norm(pointwise(self.conv3, y))
        return F.leaky_relu(y + pointwise(self.residual, x), self.slope)

    def _folded(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = _bn_scale(self.norm)
        w3 = self.conv3.weight[:, :, 0, 0] * scale[:, None]  # (out, in)
        w = torch.einsum("oc,cikl->oikl", w3, self.conv2.weight)
        b = w3 @ self.conv2.bias + self.conv3.bias * scale + shift
        y = F.leaky_relu(self.conv1(x), self.slope, inplace=True)
        y = F.conv2d(y, w, b, self.conv3.stride, self.conv2.padding)
        return F.leaky_relu(y.add_(pointwise(self.residual, x)), self.slope, inplace=True)


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
