"""The sparse convolutional autoencoder: L top-k code-maps from grouped linear layers."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from imambig.config import ModelConfig
from imambig.model.layers.blocks import DownChain, DownSkip, UpChain, UpSkip
from imambig.model.layers.grouped_linear import GroupedLinear
from imambig.model.layers.topk import topk_sparsify


class SparseAutoencoder(nn.Module):
    """Encoder: chain of down blocks plus one skip per level, concatenated at the
    bottleneck, 1x1 conv to L channels, grouped linear (L maps n -> m), top-k.
    Decoder: the same grouped weights transposed, 1x1 conv, chain of up blocks with
    per-level skips, sigmoid.

    Shapes: images (B, 3, H, W) in [0, 1]; bottleneck ``h`` (B, L, n) with n the
    bottleneck's H*W; dense code ``W h`` (B, L, m); sparse code ``z`` (B, L, m) with
    exactly ``k`` non-zeros per map.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        levels = len(c.filters)
        c_in = (3, *c.filters[:-1])  # input channels of each level
        remaining = [math.prod(c.scales[i:]) for i in range(levels)]
        bott = c.filters[-1]

        self.down_chain = nn.ModuleList(
            DownChain(c_in[i], c.filters[i], c.scales[i], c.groups, c.negative_slope)
            for i in range(levels)
        )
        self.down_skip = nn.ModuleList(
            DownSkip(c_in[i], bott, remaining[i], c.negative_slope) for i in range(levels)
        )
        self.to_maps = nn.Conv2d(bott * (levels + 1), c.n_maps, 1)
        self.linear = GroupedLinear(c.n_maps, c.bottleneck_size, c.code_length)
        self.from_maps = nn.Conv2d(c.n_maps, bott * (levels + 1), 1)
        # Decoder level i mirrors encoder level i: filters[i] -> c_in[i], up by scales[i].
        self.up_chain = nn.ModuleList(
            UpChain(c.filters[i], c_in[i], c.scales[i], c.negative_slope) for i in range(levels)
        )
        self.up_skip = nn.ModuleList(
            UpSkip(bott, c_in[i], remaining[i], c.negative_slope) for i in range(levels)
        )
        # NHWC: oneDNN's CPU kernels (float32 and bfloat16) and GPU tensor cores run the
        # small convolutions 1.6-1.7x faster this way. Inputs are converted on entry, so
        # every item sees the same kernels whatever the caller's layout.
        self.to(memory_format=torch.channels_last)

    # -- encoder -----------------------------------------------------------------------

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> bottleneck vectors h (B, L, n)."""
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for chain, skip in zip(self.down_chain, self.down_skip, strict=True):
            skips.append(skip(x))
            x = chain(x)
        h = self.to_maps(torch.cat([*skips, x], dim=1))
        return h.flatten(2)

    def dense_code(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-top-k code W h (B, L, m); attacks and noise fitting need it."""
        return self.linear(self.bottleneck(x))

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Sparse code (B, L, m) with exactly ``k`` (default: config.k) non-zeros per map."""
        return topk_sparsify(self.dense_code(x), k or self.config.k)

    # -- decoder -----------------------------------------------------------------------

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The parameters decoding uses: all but the encoder-only blocks (the grouped
        layer is shared: the decoder applies it transposed)."""
        encoder_only = ("down_chain", "down_skip", "to_maps")
        return [p for name, p in self.named_parameters() if not name.startswith(encoder_only)]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        h = self.linear.transpose(z).unflatten(2, c.bottleneck_hw)
        h = h.contiguous(memory_format=torch.channels_last)
        parts = self.from_maps(h).chunk(len(c.filters) + 1, dim=1)
        y, residuals = parts[-1], parts[:-1]
        for i in reversed(range(len(c.filters))):
            y = self.up_chain[i](y) + self.up_skip[i](residuals[i])
            if i > 0:
                y = F.leaky_relu(y, c.negative_slope)
        return y

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Sparse (or any) code (B, L, m) -> images (B, 3, H, W) in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (reconstruction logits, sparse code)."""
        z = self.encode(x)
        return self.decode_logits(z), z
