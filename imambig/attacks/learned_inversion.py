"""Learned inversion: the attacker trains a network that maps public codes to images.

Kerckhoffs grants it unlimited (public code -> image) pairs: it ambiguates its own faces
through the public mechanism, as many releases of each as it likes (one per secret of
its own), and fine-tunes a copy of the public decoder on them. Whatever separates real
entries from fakes in aggregate (coherence with a face, the fakes' statistics) the
network learns to use; its output on a target's public code is the attack's image.

``inversion_reencode`` then treats that image as a better starting point for the
re-encoding attack: encode it again and keep the public entries that agree with the
re-encoded code.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch.nn import functional as F

from imambig.attacks.reencode import agreement
from imambig.attacks.registry import AttackContext, Guess, register_attack
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import autocast, resolve


def train_inverter(
    model: SparseAutoencoder,
    codes: torch.Tensor,
    images: torch.Tensor,
    epochs: int = 6,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    precision: str = "auto",
) -> SparseAutoencoder:
    """A copy of ``model`` whose decoder is fine-tuned (MSE, cosine schedule) to map
    public ``codes`` (N, L, m) to ``images`` (N, 3, H, W) in [0, 1]."""
    precision = resolve(precision)
    torch.manual_seed(seed)
    inverter = copy.deepcopy(model).train()
    opt = torch.optim.Adam(inverter.decoder_parameters(), lr=lr)  # the inverter only decodes
    n = len(codes)
    steps, step = epochs * math.ceil(n / batch), 0
    for _ in range(epochs):
        for s in torch.randperm(n).split(batch):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            with autocast(precision):
                logits = inverter.decode_logits(codes[s])
            loss = F.mse_loss(torch.sigmoid(logits.float()), images[s])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return inverter.eval()


@torch.no_grad()
def invert(inverter: SparseAutoencoder, codes: torch.Tensor, batch: int = 128,
           precision: str = "auto") -> torch.Tensor:
    """The inverter's images (B, 3, H, W) for public ``codes`` (B, L, m)."""
    precision = resolve(precision)
    out = []
    for s in range(0, len(codes), batch):
        with autocast(precision):
            out.append(inverter.decode(codes[s : s + batch]).float())
    return torch.cat(out)


def _inverted(ctx: AttackContext) -> torch.Tensor:
    def compute() -> torch.Tensor:
        releases = ctx.own_releases()
        # Public values beyond any real one (sealed records' padded values reach the
        # quantizer's limit) are clipped to the real range the attacker sees in its own
        # records, so the fine-tuning stays stable whatever the mechanism publishes.
        limit = max(float(np.abs(r.opened().values.astype(np.float32)).max())
                    for r in releases)
        codes = torch.cat([r.public_code() for r in releases]).clamp(-limit, limit)
        images = ctx.own_images().repeat(len(releases), 1, 1, 1)
        inverter = train_inverter(ctx.model, codes, images, ctx.inversion_epochs,
                                  seed=ctx.seed)
        return invert(inverter, ctx.target.public_code().clamp(-limit, limit))

    return ctx.cached_images("learned_inversion", compute)


@register_attack("learned_inversion", trained=True)
def learned_inversion(ctx: AttackContext) -> Guess:
    n = len(ctx.own_releases())
    return Guess("learned inversion", images=_inverted(ctx),
                 notes=f"decoder fine-tuned {ctx.inversion_epochs} epochs on "
                       f"{len(ctx.own_images())} own images x {n} releases")


@register_attack("inversion_reencode", trained=True)
def inversion_reencode(ctx: AttackContext) -> Guess:
    images = _inverted(ctx)
    with torch.no_grad():
        dense = torch.cat([ctx.model.dense_code(images[s : s + 64])
                           for s in range(0, len(images), 64)])
    mask = torch.from_numpy(ctx.target.mask)
    again = dense[mask].double().numpy().reshape(ctx.target.values.shape)
    return Guess("inversion + re-encode", agreement(ctx.target.values, again),
                 "public entries scored by agreement with the re-encoded inversion")
