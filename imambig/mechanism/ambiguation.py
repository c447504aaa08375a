"""Ambiguation: hide each map's k real non-zeros among k' public ones.

Every random choice comes from the owner's secret decoy map applied to the item's own
bottleneck (:mod:`imambig.mechanism.decoy_map`): decoys that move with the code. So the
same image publishes the same record under any item id, in any run, and a re-saved or
slightly shifted copy publishes a record that differs from the first only where the
code itself moved, for fakes as for real entries. The first decoy, through the noise
model's copula, is a synthetic code with the real per-position marginals: the fakes
sit at its ``k' - k`` largest weighted entries outside the real support and carry its
signs. Their magnitudes come from the per-position magnitude model scaled to this
item's own threshold and excess, with uniforms read off the other decoys, so that
P(real | position, sign, magnitude) stays flat.

Nothing public depends on which entries are real: public positions are a sorted mask,
real and fake values pass through one quantizer. What is published is this record
sealed (``imambig.mechanism.seal``), which hides the real values and positions too.
"""

from __future__ import annotations

import numpy as np
import torch

from imambig.mechanism import exact_float
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel, real_support
from imambig.mechanism.quantizer import quantize
from imambig.mechanism.record import Ambiguated
from imambig.mechanism.seal import seal_records
from imambig.model.autoencoder import SparseAutoencoder


@torch.no_grad()
def ambiguate(
    model: SparseAutoencoder,
    h: torch.Tensor,
    noise: NoiseModel,
    decoy_map: DecoyMap,
    sealed: bool = True,
) -> Ambiguated:
    """Ambiguate the codes of bottleneck vectors ``h`` (B, L, n); ``decoy_map`` is the
    owner's (``DecoyMap.for_owner(noise, owner_secret)``). The records come sealed with
    the owner's seal key, as published; ``sealed=False`` gives the ambiguated records
    underneath (what a seal holder sees)."""
    mask, values, real, seals = ambiguate_tensors(model, h, noise, decoy_map, sealed)
    return Ambiguated(mask.cpu().numpy(), values.cpu().numpy(), real.cpu().numpy(), seals)


@torch.no_grad()
def ambiguate_tensors(
    model: SparseAutoencoder,
    h: torch.Tensor,
    noise: NoiseModel,
    decoy_map: DecoyMap,
    sealed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray | None]:
    """:func:`ambiguate` on ``h``'s device, the whole batch as tensor code: (mask,
    values, real) there and the seals (None unsealed). The bytes do not depend on the
    device, the batch or the thread count (``exact_float``, ``top_positions``)."""
    c = model.config
    B, k, k_public = h.shape[0], c.k, noise.k_public
    h = h.float()
    decoy_map = decoy_map.to(h.device)
    dense = exact_float.grouped_linear(h, model.linear.weight)
    real_idx, real_vals, threshold = real_support(dense, k)
    support = torch.zeros_like(dense, dtype=torch.bool).scatter(-1, real_idx, True)
    excess_scale = (exact_float.row_sum(real_vals.abs() - threshold) / k).clamp_min(1e-12)
    fake_idx, fake_vals = noise.fake_values(model, decoy_map, h, threshold, excess_scale,
                                            support)

    code = torch.zeros_like(dense)
    code.scatter_(-1, real_idx, real_vals)
    code.scatter_(-1, fake_idx, fake_vals)
    mask = support.clone().scatter_(-1, fake_idx, True)
    values = quantize(code[mask].view(B, c.n_maps, k_public))
    real = support[mask].view(B, c.n_maps, k_public)
    if not sealed:
        return mask, values, real, None
    return seal_records(mask, values, real, decoy_map.seal_key)
