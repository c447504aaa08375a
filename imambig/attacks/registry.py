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
import torch

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
    # For the learned inversion: the attacker's own images and several releases of their
    # records (one per secret of its own), in the same item order.
    images: torch.Tensor | None = None
    releases: tuple[Ambiguated, ...] = ()
    inversion_epochs: int = 6
    _cache: dict[str, np.ndarray] = field(default_factory=dict)
    _images: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.model.config.k

    def own_records(self) -> Ambiguated:
        if self.own is None:
            raise ValueError("trained attacks need the attacker's own records")
        return self.own

    def own_images(self) -> torch.Tensor:
        if self.images is None:
            raise ValueError("the learned inversion needs the attacker's own images")
        return self.images

    def own_releases(self) -> tuple[Ambiguated, ...]:
        """Releases of the attacker's own records; the first is ``own`` itself."""
        releases = self.releases or ((self.own_records(),) if self.own is not None else ())
        if not releases:
            raise ValueError("the learned inversion needs the attacker's own records")
        return releases

    def cached_images(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """An attacker's reconstruction shared between attacks."""
        if key not in self._images:
            self._images[key] = compute()
        return self._images[key]

    def cached(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Scores shared between attacks (e.g. re-encoding, which seeds least squares)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


@dataclass(frozen=True)
class Guess:
    """An attack's scores, (B', L', k') for the first B' items and L' maps (all of them
    unless the attack is too slow for that), or the images it reconstructs directly
    (B, 3, H, W) without guessing the support; and the row's name and notes."""

    label: str
    scores: np.ndarray | None = None
    notes: str = ""
    images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.images is None):
            raise ValueError("a guess has scores or images, one of the two")


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
