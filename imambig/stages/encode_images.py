"""Images -> public records + keys, for one batch (pure; no storage, no scheduling)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.keys import encode_keys
from imambig.mechanism.noise_model import NoiseModel
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import autocast
from imambig.stores.loader import to_tensor

# Items ambiguated together, always exactly this many (the last group is padded): the
# mechanism's matrix products round differently for different row counts, and through
# the seal a near-tie moved by one ulp publishes another record, so an item encoded
# alone and in a region must meet the same shapes (as ``bottlenecks``' micro-batches
# do). Groups also bound memory: the mechanism holds about 2 MB an item at once, so a
# 1024-item region peaks near 0.7 GB per worker instead of 2.5 GB.
MECHANISM_ITEMS = 64


@dataclass(frozen=True)
class EncodedBatch:
    mask: np.ndarray  # (B, L, m) bool, public
    values: np.ndarray  # (B, L, k') float16, public
    keys: list[bytes]  # per item, secret


@torch.no_grad()
def bottlenecks(model: SparseAutoencoder, images: np.ndarray, precision: str = "fp32",
                micro_batch: int = 8) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> bottlenecks (B, L, n) in float32, at ``precision``.

    Runs in zero-padded micro-batches of a fixed size so every item's result is bitwise
    independent of its neighbours (CPU kernels pick different blockings for different
    batch sizes, which moves float rounding).
    """
    out = []
    for s in range(0, len(images), micro_batch):
        x = to_tensor(images[s : s + micro_batch])
        n = len(x)
        if n < micro_batch:
            x = torch.cat([x, x.new_zeros((micro_batch - n, *x.shape[1:]))])
        with autocast(precision):
            out.append(model.bottleneck(x).float()[:n])
    return torch.cat(out)


@torch.no_grad()
def ambiguate_bottlenecks(model: SparseAutoencoder, noise: NoiseModel, decoy_map: DecoyMap,
                          h: torch.Tensor) -> EncodedBatch:
    """Sealed public records and keys of bottlenecks ``h`` (B, L, n): the mechanism,
    seal and key coding, in groups of ``MECHANISM_ITEMS``. Given the same bottlenecks
    this writes the same bytes on every machine (``tests/golden/README.md``)."""
    parts = []
    for s in range(0, len(h), MECHANISM_ITEMS):
        group = h[s : s + MECHANISM_ITEMS]
        n = len(group)
        pad = group[:1].expand(MECHANISM_ITEMS - n, *group.shape[1:])
        parts.append(ambiguate(model, torch.cat([group, pad]), noise, decoy_map).items(
            slice(0, n)))
    amb = Ambiguated.concatenate(parts) if parts else ambiguate(model, h, noise, decoy_map)
    return EncodedBatch(amb.mask, amb.values, encode_keys(amb.real, amb.seals))


@torch.no_grad()
def encode_images(
    model: SparseAutoencoder,
    noise: NoiseModel,
    decoy_map: DecoyMap,
    images: np.ndarray,
    precision: str = "fp32",
    micro_batch: int = 8,
) -> EncodedBatch:
    """Encode uint8 images (B, H, W, 3): sealed public records and keys. Nothing but
    the pixels (and the owner's decoy map and seal key) decides an item's record."""
    h = bottlenecks(model, images, precision, micro_batch)
    return ambiguate_bottlenecks(model, noise, decoy_map, h)
