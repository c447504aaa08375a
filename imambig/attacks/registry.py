"""Attacks by name: each attack module registers its entry points with
``@register_attack`` (the registry idiom of CompressAI's model zoo), and the suite looks
them up instead of branching on names.

An attack is a function of an ``AttackContext`` (what the attacker has) that returns a
``Guess``: one score per public entry, higher meaning "more likely real".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


@dataclass
class AttackContext:
    """What an attacker has: the public model, the records attacked and, for trained
    attacks, records of its own whose labels it knows (Kerckhoffs: it can run the
    public mechanism with a secret of its own)."""

    model: SparseAutoencoder
    target: Ambiguated
    own: Ambiguated | None = None
    seed: int = 0
    discriminator_epochs: int = 4
    reencode_iterations: int = 3
    max_items_lp: int | None = 20  # the LP solves one program per item and map: bounded
    max_maps_lp: int | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.model.config.k

    def own_records(self) -> Ambiguated:
        if self.own is None:
            raise ValueError("trained attacks need the attacker's own records")
        return self.own

    def cached(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Scores shared between attacks (e.g. re-encoding, which seeds least squares)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


@dataclass(frozen=True)
class Guess:
    """An attack's scores, (B', L', k') for the first B' items and L' maps (all of them
    unless the attack is too slow for that), and the row's name and notes."""

    label: str
    scores: np.ndarray
    notes: str = ""


Attack = Callable[[AttackContext], Guess]


@dataclass(frozen=True)
class RegisteredAttack:
    name: str
    run: Attack
    trained: bool  # learns from the attacker's own records


ATTACKS: dict[str, RegisteredAttack] = {}


def register_attack(name: str, *, trained: bool = False) -> Callable[[Attack], Attack]:
    """Register ``run`` under ``name`` (the name used in configs and on the command line)."""

    def register(run: Attack) -> Attack:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        ATTACKS[name] = RegisteredAttack(name, run, trained)
        return run

    return register
