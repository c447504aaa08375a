"""Ambiguation: hide each map's k real non-zeros among k' public ones.

For every item the randomness comes from HMAC(owner secret, model id, item id):
re-encoding an item publishes identical bytes, and a second release of the same item
carries the same fakes (fresh noise per release would let anyone diff the releases).
A decoy code is drawn from the noise model (a synthetic code with the real per-position
marginals, see :mod:`imambig.mechanism.noise_model`); the fakes sit at its ``k' - k`` largest
weighted entries outside the real support and carry its signs, and their magnitudes
come from the per-position magnitude model scaled to this item's own threshold and
excess, so that P(real | position, sign, magnitude) stays flat.

Nothing public depends on which entries are real: public positions are a sorted mask,
real and fake values pass through one quantizer.
"""

from __future__ import annotations

import torch

from imambig.access.secrets import Secret, noise_rng
from imambig.mechanism.noise_model import NoiseModel, real_support
from imambig.mechanism.quantizer import quantize
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


@torch.no_grad()
def ambiguate(
    model: SparseAutoencoder,
    h: torch.Tensor,
    noise: NoiseModel,
    owner_secret: Secret,
    model_id: str,
    item_ids: list[str],
) -> Ambiguated:
    """Ambiguate the codes of bottleneck vectors ``h`` (B, L, n) of items ``item_ids``."""
    c = model.config
    if noise.model_id != model_id:
        raise ValueError(f"noise model was fitted for model {noise.model_id}, not {model_id}")
    B, k, k_public = h.shape[0], c.k, noise.k_public
    dense = model.linear(h.float().cpu())
    real_idx, real_vals, threshold = real_support(dense, k)
    support = torch.zeros_like(dense, dtype=torch.bool).scatter(-1, real_idx, True)

    rngs = [noise_rng(owner_secret, model_id, item) for item in item_ids]
    decoys, u = noise.draw(rngs, k_public - k)
    decoy = noise.decoy_codes(model, decoys)
    weights = torch.from_numpy(noise.position_weights).float()
    fake_idx = (decoy.abs() * weights).masked_fill(support, -1.0).topk(k_public - k, dim=-1).indices
    excess_scale = (real_vals.abs() - threshold).mean(-1, keepdim=True).clamp_min(1e-12)
    fake_vals = noise.fake_values(decoy.gather(-1, fake_idx).sign(), threshold, excess_scale,
                                  fake_idx, u)

    code = torch.zeros_like(dense)
    code.scatter_(-1, real_idx, real_vals)
    code.scatter_(-1, fake_idx, fake_vals)
    mask = support.clone().scatter_(-1, fake_idx, True)
    values = quantize(code[mask].view(B, c.n_maps, k_public))
    real = support[mask].view(B, c.n_maps, k_public)
    return Ambiguated(mask.numpy(), values.numpy(), real.numpy())
