"""A privacy experiment on an image store, the work behind ``imambig attack``.

The owner fits the noise model on training images and ambiguates held-out (test)
images with its secret; the attacker holds *other* training images, which it ambiguates
itself through the public mechanism with a secret of its own (so it knows the labels of
its entries), and attacks the owner's records. One run per k'; each reports the attack
rows, the per-map KS test between real and fake values, and the key size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import ks_2samp

from imambig.access.secrets import Secret
from imambig.attacks.scoring import AttackResult
from imambig.attacks.suite import attacker_ambiguation, format_table, run_attacks
from imambig.config import AttackConfig, default_k_public
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.keys import key_bound_bits, key_bytes
from imambig.mechanism.noise_model import fit_noise_model
from imambig.mechanism.record import Ambiguated
from imambig.model.checkpoint import load_model
from imambig.stores.image_store import ImageStore, open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location

BATCH = 64
KS_ALPHA = 0.01


@dataclass
class PrivacyRun:
    """Everything measured at one k'."""

    model_id: str
    k: int
    k_public: int
    key_bytes: int
    key_bound_bytes: float
    ks_pass_fraction: float  # maps whose real-vs-fake KS p-value exceeds KS_ALPHA
    results: list[AttackResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = [r.to_dict() for r in self.results]
        return d

    def markdown(self) -> str:
        head = (f"k' = {self.k_public} (k'/k = {self.k_public / self.k:g}): key "
                f"{self.key_bytes} B (bound {self.key_bound_bytes:.1f} B); maps with KS "
                f"p > {KS_ALPHA}: {self.ks_pass_fraction:.2f}")
        return head + "\n\n" + format_table(self.results)


def ks_pass_fraction(amb: Ambiguated, alpha: float = KS_ALPHA) -> float:
    """Per map, a two-sample KS test of real against fake public values."""
    v = amb.values.astype(np.float64)
    passed = [ks_2samp(v[:, m][amb.real[:, m]], v[:, m][~amb.real[:, m]]).pvalue > alpha
              for m in range(v.shape[1])]
    return float(np.mean(passed))


def _split(store: ImageStore, fit: int, own: int, targets: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = rng.permutation(store.indices("train"))
    test = store.indices("test")
    if len(test) == 0:
        raise ValueError("the image store has no 'test' items to attack")
    if len(train) < fit + own:
        raise ValueError(f"the image store has {len(train)} training items; the noise fit "
                         f"({fit}) and the attacker's own images ({own}) need {fit + own}")
    return (np.sort(train[:fit]), np.sort(train[fit : fit + own]),
            np.sort(rng.permutation(test)[:targets]))


def run_privacy_experiment(
    model_location: Location,
    images: Location,
    config: AttackConfig,
    log: Callable[[str], None] | None = None,
) -> list[PrivacyRun]:
    """One ``PrivacyRun`` per k' of ``config`` (default: the model's default k')."""
    say = log or (lambda _m: None)
    model, info, _ = load_model(model_location)
    c = model.config
    store = open_image_store(images)
    fit_idx, own_idx, tgt_idx = _split(store, config.fit_items, config.own_items,
                                       config.target_items, config.seed)
    ids = [str(i) for i in store.item_ids()[tgt_idx]]
    fit = to_tensor(store.read(fit_idx))
    targets = to_tensor(store.read(tgt_idx))
    own_images = to_tensor(store.read(own_idx))
    with torch.no_grad():
        h = torch.cat([model.bottleneck(targets[s : s + BATCH])
                       for s in range(0, len(targets), BATCH)])
    seed = config.seed.to_bytes(4, "little")
    owner = Secret(hashlib.sha256(b"imambig experiment owner" + seed).digest())
    attacker = Secret(hashlib.sha256(b"imambig experiment attacker" + seed).digest())
    runs = []
    for k_public in config.k_publics or (default_k_public(c.k),):
        say(f"k'={k_public}: fitting the noise model on {len(fit_idx)} training images")
        noise = fit_noise_model(model, info.model_id,
                                [fit[s : s + BATCH] for s in range(0, len(fit), BATCH)],
                                k_public)
        amb = ambiguate(model, h, noise, owner, info.model_id, ids)
        own = attacker_ambiguation(model, noise, own_images, attacker)
        results = run_attacks(model, noise, amb, targets, own_images, list(config.attacks),
                              attacker_amb=own, seed=config.seed, log=say)
        runs.append(PrivacyRun(
            model_id=info.model_id, k=c.k, k_public=k_public,
            key_bytes=key_bytes(c.n_maps, k_public, c.k),
            key_bound_bytes=key_bound_bits(c.n_maps, k_public, c.k) / 8,
            ks_pass_fraction=ks_pass_fraction(amb), results=results))
    return runs


def to_json(runs: list[PrivacyRun]) -> str:
    return json.dumps({"runs": [r.to_dict() for r in runs]}, indent=2)
