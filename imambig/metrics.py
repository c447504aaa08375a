"""Image quality metrics. PSNR is measured on 8-bit outputs, as a viewer sees them."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1] -> uint8, rounded the way an image file stores them."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def psnr_uint8(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB between two uint8 batches of equal shape (B, ...)."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten(1)
    b = torch.as_tensor(b, dtype=torch.float64).flatten(1)
    mse = ((a - b) ** 2).mean(dim=1).clamp_min(1e-10)  # identical images: cap, not inf
    return (10 * torch.log10(255.0**2 / mse)).numpy()


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-image SSIM between two uint8-valued batches (B, C, H, W).

    Settings (Wang et al. 2004): Gaussian window 11x11 with sigma 1.5, applied without
    padding (only fully covered pixels count); K1 = 0.01, K2 = 0.03; data_range = 255,
    i.e. inputs are 0..255 values. The SSIM map is averaged over pixels, then channels.
    """
    x = torch.as_tensor(a).to(torch.float64)
    y = torch.as_tensor(b).to(torch.float64)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) batches of one shape, got {x.shape}, {y.shape}"
        )
    size, sigma, data_range = 11, 1.5, 255.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    channels = x.shape[1]
    window = (g[:, None] * g[None, :]).expand(channels, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2, 3)).numpy()
