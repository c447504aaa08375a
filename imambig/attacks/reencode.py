"""Re-encoding consistency: real entries are the encoder's own output, fakes are not.

Decode a candidate code to an image, encode that image again, and compare the re-encoded
dense code with the public values: where the candidate image resembles the original,
the real entries come back close to their public values while the fakes (values the
encoder never produced for this image) do not. The first candidate is the public code
as is; each further round keeps the k best-agreeing entries per map, decodes that guess
and re-encodes it.
"""

from __future__ import annotations

import numpy as np
import torch

from imambig.attacks.registry import AttackContext, Guess, register_attack
from imambig.attacks.scoring import guess_mask
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


@torch.no_grad()
def reencoded_values(
    model: SparseAutoencoder, code: torch.Tensor, mask: np.ndarray, batch: int = 64
) -> np.ndarray:
    """Dense re-encoding of ``decode(code)`` read at the public positions, (B, L, k')."""
    out = []
    for s in range(0, len(code), batch):
        dense = model.dense_code(model.decode(code[s : s + batch]))
        out.append(dense[torch.from_numpy(mask[s : s + batch])].double().numpy())
    B, L = mask.shape[:2]
    return np.concatenate(out).reshape(B, L, -1)


def agreement(values: np.ndarray, reencoded: np.ndarray) -> np.ndarray:
    """-|re-encoded - public| in units of the map's median public magnitude, so scores
    of different maps and items are comparable (for the pooled AUC)."""
    v = values.astype(np.float64)
    scale = np.median(np.abs(v), axis=-1, keepdims=True) + 1e-12
    return -np.abs(reencoded - v) / scale


def reencode_scores(
    model: SparseAutoencoder, amb: Ambiguated, k: int, iterations: int = 3
) -> np.ndarray:
    """Agreement scores after ``iterations`` refinements of the guess (0: public code only)."""
    model.eval()
    code = amb.public_code()
    scores = agreement(amb.values, reencoded_values(model, code, amb.mask))
    for _ in range(iterations):
        code = amb.guessed_code(guess_mask(scores, k))
        scores = agreement(amb.values, reencoded_values(model, code, amb.mask))
    return scores


def shared_reencode_scores(ctx: AttackContext) -> np.ndarray:
    """Computed once per suite run: the re-encode row and least squares' start share it."""
    return ctx.cached("reencode", lambda: reencode_scores(ctx.model, ctx.target, ctx.k,
                                                          ctx.reencode_iterations))


@register_attack("reencode")
def reencode(ctx: AttackContext) -> Guess:
    return Guess("re-encode", shared_reencode_scores(ctx),
                 f"{ctx.reencode_iterations} refinements")
