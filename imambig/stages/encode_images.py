"""Images -> public records + keys, for one batch (pure; no storage, no scheduling)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imambig.access.secrets import Secret
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.keys import encode_keys
from imambig.mechanism.noise_model import NoiseModel
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stores.loader import to_tensor


@dataclass(frozen=True)
class EncodedBatch:
    mask: np.ndarray  # (B, L, m) bool, public
    values: np.ndarray  # (B, L, k') float16, public
    keys: list[bytes]  # per item, secret


@torch.no_grad()
def encode_images(
    model: SparseAutoencoder,
    noise: NoiseModel,
    owner_secret: Secret,
    model_id: str,
    images: np.ndarray,
    item_ids: list[str],
    micro_batch: int = 8,
) -> EncodedBatch:
    """Encode uint8 images (B, H, W, 3) of ``item_ids``.

    Runs in zero-padded micro-batches of a fixed size so every item's result is bitwise
    independent of its neighbours (CPU kernels pick different blockings for different
    batch sizes, which moves float rounding).
    """
    masks, values, reals = [], [], []
    for s in range(0, len(images), micro_batch):
        chunk = images[s : s + micro_batch]
        ids = list(item_ids[s : s + micro_batch])
        n = len(chunk)
        x = to_tensor(chunk)
        if n < micro_batch:
            x = torch.cat([x, x.new_zeros((micro_batch - n, *x.shape[1:]))])
            ids += [f"<pad {i}>" for i in range(micro_batch - n)]  # results discarded
        x = x.contiguous()
        amb = ambiguate(model, model.bottleneck(x), noise, owner_secret, model_id, ids)
        masks.append(amb.mask[:n])
        values.append(amb.values[:n])
        reals.append(amb.real[:n])
    real = np.concatenate(reals)
    return EncodedBatch(np.concatenate(masks), np.concatenate(values), encode_keys(real))
