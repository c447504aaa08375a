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
