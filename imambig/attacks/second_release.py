"""Second releases: the attacker holds two public records of (nearly) the same image and
compares them entry by entry.

Record A is the target; record B is a second release: the same photo under another item
id, a near-duplicate (re-saved, resized, shifted), the same image encoded at another
precision or under a model fine-tuned from the first. Whatever a real entry does
between the two records (stay, keep its value, move by the code's own change) and a fake
does differently, these attacks find:

- ``intersect``: entries present in both records come first, and among them those whose
  value changed least (exact copies with fresh fakes: the intersection *is* the key);
- ``pair classifier``: an MLP on what each entry of A does in B (present or not, value
  change, sign) together with the single-record features of the learned discriminator,
  trained on pairs the attacker makes from its own images with its own secret.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imambig.attacks.discriminator import (
    MAX_TRAIN_ENTRIES,
    _fit_stats,
    _n_features,
    _Stats,
    features,
    train_mlp,
)
from imambig.attacks.position import position_index
from imambig.attacks.scoring import subset
from imambig.mechanism.record import Ambiguated

PAIR_FEATURES = 7
CHUNK = 64  # items per feature batch: features are (items, L, k', F) floats


def pair_features(a: Ambiguated, b: Ambiguated) -> np.ndarray:
    """(B, L, k', PAIR_FEATURES): what each public entry of ``a`` does in ``b``."""
    if a.mask.shape != b.mask.shape:
        raise ValueError(f"records of different shapes {a.mask.shape} and {b.mask.shape}")
    maps, pos = position_index(a)
    items = np.arange(len(a.values))[:, None, None]
    va = a.values.astype(np.float64)
    vb = b.public_code().numpy().astype(np.float64)[items, maps, pos]
    in_b = b.mask[items, maps, pos].astype(np.float64)
    scale = np.median(np.abs(va), axis=-1, keepdims=True) + 1e-12
    change = np.log(np.abs(va - vb) / scale + 1e-4)
    return np.stack([
        in_b,
        np.log(np.abs(vb) / scale + 1e-3),
        change,
        in_b * change,
        (np.sign(va) == np.sign(vb)).astype(np.float64),
        np.broadcast_to(in_b.mean(-1, keepdims=True), in_b.shape),  # the pair's overlap
        np.broadcast_to((va == vb).mean(-1, keepdims=True), in_b.shape),  # identical share
    ], axis=-1)


def intersect_scores(a: Ambiguated, b: Ambiguated) -> np.ndarray:
    """Present in both records first, then the smallest value change."""
    f = pair_features(a, b)
    in_b, change = f[..., 0], f[..., 2]
    return 100.0 * in_b - np.where(in_b > 0, change, 0.0)


def _both(a: Ambiguated, b: Ambiguated, stats: _Stats) -> np.ndarray:
    single = features(a, stats).reshape(-1, _n_features(a))
    return np.concatenate([single, pair_features(a, b).reshape(-1, PAIR_FEATURES)], axis=1)


@dataclass
class PairClassifier:
    net: nn.Module
    stats: _Stats
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, own_a: Ambiguated, own_b: Ambiguated, seed: int = 0,
            epochs: int = 4) -> PairClassifier:
        """Learn from the attacker's own pairs (A's labels known: its own secret)."""
        rng = np.random.default_rng(seed)
        stats = _fit_stats(own_a)
        rate = min(1.0, MAX_TRAIN_ENTRIES / own_a.real.size)
        xs, ys = [], []
        for s in range(0, len(own_a.values), CHUNK):
            part = slice(s, s + CHUNK)
            x = _both(subset(own_a, part), subset(own_b, part), stats)
            keep = rng.random(len(x)) < rate
            xs.append(x[keep])
            ys.append(own_a.real[part].reshape(-1)[keep])
        net, mean, std = train_mlp(np.concatenate(xs), np.concatenate(ys), seed, epochs)
        return cls(net, stats, mean, std)

    @torch.no_grad()
    def scores(self, a: Ambiguated, b: Ambiguated) -> np.ndarray:
        out = np.empty(a.values.shape, np.float64)
        for s in range(0, len(a.values), CHUNK):
            part = slice(s, s + CHUNK)
            x = _both(subset(a, part), subset(b, part), self.stats)
            x = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
            out[part] = self.net(x).squeeze(-1).double().numpy().reshape(a.values[part].shape)
        return out
