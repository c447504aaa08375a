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


WINDOW, SIGMA, DATA_RANGE = 11, 1.5, 255.0
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli, Bovik 2003


def _ssim_parts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term, (B,) each."""
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    g = torch.exp(-((torch.arange(WINDOW, dtype=torch.float64) - WINDOW // 2) ** 2)
                  / (2 * SIGMA**2))
    g = g / g.sum()
    channels = x.shape[1]
    # The Gaussian window is separable: two 1-D passes, 11x fewer multiplications.
    rows = g.view(1, 1, WINDOW, 1).expand(channels, 1, WINDOW, 1)
    cols = g.view(1, 1, 1, WINDOW).expand(channels, 1, 1, WINDOW)

    def blur(t: torch.Tensor) -> torch.Tensor:
        conv = torch.nn.functional.conv2d
        return conv(conv(t, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def _pair(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray
          ) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(a).to(torch.float64)
    y = torch.as_tensor(b).to(torch.float64)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two (B, C, H, W) batches of one shape, got {x.shape}, {y.shape}"
        )
    return x, y


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-image SSIM between two uint8-valued batches (B, C, H, W).

    Settings (Wang et al. 2004): Gaussian window 11x11 with sigma 1.5, applied without
    padding (only fully covered pixels count); K1 = 0.01, K2 = 0.03; data_range = 255,
    i.e. inputs are 0..255 values. The SSIM map is averaged over pixels, then channels.
    """
    return _ssim_parts(*_pair(a, b))[0].numpy()


def ms_ssim_scales(height: int, width: int) -> int:
    """How many of the five MS-SSIM scales fit: the coarsest must still hold a window."""
    n = 1
    while n < len(MS_WEIGHTS) and min(height, width) // 2**n >= WINDOW:
        n += 1
    return n


def ms_ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-image MS-SSIM (Wang et al. 2003), SSIM settings as :func:`ssim`.

    Small images cannot hold all five scales (the coarsest needs 11 px after four 2x
    poolings, 176 px at full size): the first ``ms_ssim_scales(H, W)`` are used with
    their weights renormalized to sum to 1, e.g. 3 scales at 64x64, 4 at 128x128.
    """
    x, y = _pair(a, b)
    n = ms_ssim_scales(x.shape[2], x.shape[3])
    w = torch.tensor(MS_WEIGHTS[:n], dtype=torch.float64)
    w = w / w.sum()
    out = torch.ones(x.shape[0], dtype=torch.float64)
    for i in range(n):
        s, cs = _ssim_parts(x, y)
        last = i == n - 1
        # cs (or the full SSIM at the coarsest scale) can dip below 0; clamp as usual
        out = out * (s if last else cs).clamp_min(1e-6) ** w[i]
        if not last:
            x = torch.nn.functional.avg_pool2d(x, 2)
            y = torch.nn.functional.avg_pool2d(y, 2)
    return out.numpy()
