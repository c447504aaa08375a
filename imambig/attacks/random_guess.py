"""Random guess: the paper's only attack, and the floor every other attack must beat."""

from __future__ import annotations

import numpy as np

from imambig.attacks.registry import AttackContext, Guess, register_attack
from imambig.mechanism.record import Ambiguated


def random_scores(amb: Ambiguated, seed: int = 0) -> np.ndarray:
    """Uniform random score per public entry (B, L, k'), independent of everything public."""
    return np.random.default_rng(seed).random(amb.real.shape)


@register_attack("random")
def random_guess(ctx: AttackContext) -> Guess:
    return Guess("random guess", random_scores(ctx.target, ctx.seed))
