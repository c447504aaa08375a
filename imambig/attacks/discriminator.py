"""Learned discriminator: a small MLP that tells real from fake entries, trained on codes
the attacker ambiguates itself (own images, own secret, public mechanism and noise fit).

Each public entry is described by what is public about it: its value, its magnitude and
that magnitude's rank and size relative to the rest of its map, which map it is in, and
where it sits (position, and how often that position is public / real in the attacker's
own codes). Any of these that differs between real and fake lets it score above chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imambig.attacks.position import position_counts, position_index
from imambig.attacks.registry import AttackContext, Guess, register_attack
from imambig.attacks.scoring import roc_auc, subset
from imambig.mechanism.record import Ambiguated

HIDDEN = 64
BATCH = 2048
MAX_TRAIN_ENTRIES = 500_000  # subsample beyond this: a few epochs must stay cheap on CPU
VAL_FRACTION = 0.2  # own items held out to report an honest validation AUC


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, 1e-12))


@dataclass
class _Stats:
    """What the features are normalized by, fitted on the attacker's training items."""

    map_scale: np.ndarray  # (L,) median |v| per map
    public: np.ndarray  # (L, m) public counts per position
    real: np.ndarray  # (L, m) real counts per position
    n_items: int


def _fit_stats(own: Ambiguated) -> _Stats:
    mags = np.abs(own.values.astype(np.float64))
    public, real = position_counts(own)
    return _Stats(np.median(mags, axis=(0, 2)) + 1e-12, public, real, len(own.values))


def features(amb: Ambiguated, stats: _Stats, leave_one_out: bool = False) -> np.ndarray:
    """(B, L, k', F) float32 features. ``leave_one_out``: the item's own entries are taken
    out of the position counts (for the items the counts were fitted on, which would
    otherwise see their own label)."""
    v = amb.values.astype(np.float64)
    B, L, kp = v.shape
    m = amb.mask.shape[-1]
    scale = stats.map_scale[None, :, None]
    a = np.abs(v) / scale
    # Fraction of the map's public entries with a larger magnitude (0 = largest).
    rank = np.argsort(np.argsort(-a, axis=-1, kind="stable"), axis=-1) / (kp - 1)
    med = np.median(a, axis=-1, keepdims=True)
    maps, pos = position_index(amb)
    public, real = stats.public[maps, pos], stats.real[maps, pos]
    n = stats.n_items
    if leave_one_out:
        public, real, n = public - 1, real - amb.real, n - 1
    p_real = (real + 1) / (public + 2)
    p_public = (public + 1) / (n + 2)
    cols = [
        v / scale,
        a,
        _log(a),
        rank,
        np.broadcast_to(_log(med), a.shape),
        _log(a) - _log(med),
        pos / (m - 1),
        _log(p_real) - _log(1 - p_real),
        _log(p_public),
    ]
    scalar = np.stack(cols, axis=-1)
    onehot = np.broadcast_to(np.eye(L)[None, :, None, :], (B, L, kp, L))
    return np.concatenate([scalar, onehot], axis=-1).astype(np.float32)


def _net(n_features: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_features, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 1),
    )


def train_mlp(x: np.ndarray, y: np.ndarray, seed: int, epochs: int, lr: float = 2e-3
              ) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A small MLP scoring entries from features ``x`` (N, F) with labels ``y`` (N,);
    returns it (in eval mode) with the feature standardization."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    torch.manual_seed(seed)
    net = _net(xt.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), BATCH):
            idx = perm[s : s + BATCH]
            opt.zero_grad()
            loss_fn(net(xt[idx]).squeeze(-1), yt[idx]).backward()
            opt.step()
    return net.eval(), mean, std


@dataclass
class Discriminator:
    net: nn.Module
    stats: _Stats
    mean: np.ndarray  # feature standardization
    std: np.ndarray
    val_auc: float | None

    @classmethod
    def fit(
        cls, own: Ambiguated, seed: int = 0, epochs: int = 4, lr: float = 2e-3
    ) -> Discriminator:
        """Train on the attacker's own ambiguated codes; a fifth of its items is held out."""
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        order = rng.permutation(len(own.values))
        n_val = int(len(order) * VAL_FRACTION) if len(order) >= 5 else 0
        train, val = subset(own, np.sort(order[n_val:])), subset(own, np.sort(order[:n_val]))
        stats = _fit_stats(train)
        # Features chunk by chunk, subsampled as they come: all of them at once would be
        # (items, L, k', F) floats, far more memory than the training needs.
        rate = min(1.0, MAX_TRAIN_ENTRIES / train.real.size)
        xs, ys = [], []
        for s in range(0, len(train.values), 64):
            part = subset(train, slice(s, s + 64))
            xp = features(part, stats, leave_one_out=True).reshape(-1, _n_features(part))
            keep = rng.random(len(xp)) < rate
            xs.append(xp[keep])
            ys.append(part.real.reshape(-1)[keep])
        x, y = np.concatenate(xs), np.concatenate(ys)
        net, mean, std = train_mlp(x, y, seed, epochs, lr)
        disc = cls(net, stats, mean, std, None)
        if n_val:
            disc.val_auc = roc_auc(disc.scores(val), val.real)
        return disc

    @torch.no_grad()
    def scores(self, amb: Ambiguated) -> np.ndarray:
        """Logit of P(real) per public entry, (B, L, k')."""
        shape = amb.values.shape
        out = np.empty(shape, np.float64)
        for s in range(0, shape[0], 64):  # bounded memory: features are (B, L, k', F)
            part = subset(amb, slice(s, s + 64))
            x = features(part, self.stats).reshape(-1, _n_features(part))
            x = torch.from_numpy((x - self.mean) / self.std)
            out[s : s + 64] = self.net(x).squeeze(-1).double().numpy().reshape(part.values.shape)
        return out


def _n_features(amb: Ambiguated) -> int:
    return 9 + amb.values.shape[1]


@register_attack("discriminator", trained=True)
def learned_discriminator(ctx: AttackContext) -> Guess:
    own = ctx.own_records()
    disc = Discriminator.fit(own, seed=ctx.seed, epochs=ctx.discriminator_epochs)
    notes = f"fit on {len(own.values)} own items"
    if disc.val_auc is not None:
        notes += f"; own held-out AUC {disc.val_auc:.3f}"
    return Guess("discriminator", disc.scores(ctx.target), notes)
