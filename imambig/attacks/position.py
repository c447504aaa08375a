"""Position attack: real supports favour some coordinates, so where an entry sits can
betray it. The attacker estimates P(real | map, position) from its own ambiguated codes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imambig.attacks.registry import AttackContext, Guess, register_attack
from imambig.mechanism.record import Ambiguated


def position_index(amb: Ambiguated) -> tuple[np.ndarray, np.ndarray]:
    """(map, position) index arrays, each (B, L, k'), of every public entry (the mask's
    row-major order is the order of ``values`` and ``real``)."""
    _, maps, pos = np.nonzero(amb.mask)
    shape = amb.values.shape
    return maps.reshape(shape), pos.reshape(shape)


def position_counts(own: Ambiguated) -> tuple[np.ndarray, np.ndarray]:
    """(L, m) counts of public and of real entries at each position."""
    public = own.mask.sum(0).astype(np.float64)
    real = np.zeros_like(public)
    np.add.at(real, position_index(own), own.real.astype(np.float64))
    return public, real


@dataclass(frozen=True)
class PositionFrequency:
    """Add-one smoothed P(real | map, position) = (real + 1) / (public + 2)."""

    p_real: np.ndarray  # (L, m)

    @classmethod
    def fit(cls, own: Ambiguated) -> PositionFrequency:
        public, real = position_counts(own)
        return cls((real + 1) / (public + 2))

    def scores(self, amb: Ambiguated) -> np.ndarray:
        return self.p_real[position_index(amb)]


@register_attack("position", trained=True)
def position_frequency(ctx: AttackContext) -> Guess:
    own = ctx.own_records()
    scores = PositionFrequency.fit(own).scores(ctx.target)
    return Guess("position", scores, f"fit on {len(own.values)} own items")
