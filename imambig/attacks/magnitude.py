"""Magnitude attacks: tell real from fake by |value| alone.

The likelihood-ratio attack is the best magnitude-only rule per map: the attacker
ambiguates images of its own with a secret of its own through the public mechanism and
noise model, so it knows which of *its* entries are real, estimates per map the density
of |value| for real and for fake entries, and scores log p_real / p_fake. The fixed rules
"keep the k largest" / "keep the k smallest" need no training; "smallest" is the one that
strips fakes sampled too large (the reference sampler's bug).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from imambig.attacks.registry import AttackContext, Guess, register_attack
from imambig.mechanism.record import Ambiguated

N_BINS = 64
PSEUDO_COUNT = 0.5  # per bin, so an empty bin gives a finite, moderate log ratio
SMOOTH_BINS = 1.0  # Gaussian smoothing of the histograms, in bins
TINY = 1e-12  # floor for log|v|: a value quantized to 0 still gets a bin


def log_magnitude(values: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.abs(values.astype(np.float64)), TINY))


def largest_scores(amb: Ambiguated) -> np.ndarray:
    """Keep the k largest magnitudes."""
    return np.abs(amb.values.astype(np.float64))


def smallest_scores(amb: Ambiguated) -> np.ndarray:
    """Keep the k smallest magnitudes."""
    return -np.abs(amb.values.astype(np.float64))


@dataclass(frozen=True)
class MagnitudeLikelihood:
    """Per-map log-density ratio of |value| on log-spaced bins."""

    edges: np.ndarray  # (N_BINS + 1,) in log|v|, shared by all maps
    log_ratio: np.ndarray  # (L, N_BINS)

    @classmethod
    def fit(cls, own: Ambiguated, n_bins: int = N_BINS) -> MagnitudeLikelihood:
        """Fit on the attacker's own ambiguated codes (their ``real`` is known to it)."""
        logv = log_magnitude(own.values)
        finite = logv[logv > np.log(TINY)]
        lo, hi = np.quantile(finite, [0.001, 0.999]) if finite.size else (0.0, 1.0)
        edges = np.linspace(lo, hi + 1e-9, n_bins + 1)
        n_maps = own.values.shape[1]
        log_ratio = np.empty((n_maps, n_bins))
        for m in range(n_maps):
            bins = _bin(logv[:, m], edges)
            real = own.real[:, m]
            p_real = _density(bins[real], n_bins)
            p_fake = _density(bins[~real], n_bins)
            log_ratio[m] = np.log(p_real) - np.log(p_fake)
        return cls(edges, log_ratio)

    def scores(self, amb: Ambiguated) -> np.ndarray:
        bins = _bin(log_magnitude(amb.values), self.edges)
        maps = np.arange(amb.values.shape[1])[None, :, None]
        return self.log_ratio[maps, bins]


def _bin(logv: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index; values outside the fitted range fall into the edge bins."""
    return np.clip(np.searchsorted(edges, logv, side="right") - 1, 0, len(edges) - 2)


def _density(bins: np.ndarray, n_bins: int) -> np.ndarray:
    counts = np.bincount(bins.ravel(), minlength=n_bins).astype(np.float64)
    counts = gaussian_filter1d(counts, SMOOTH_BINS, mode="nearest") + PSEUDO_COUNT
    return counts / counts.sum()


@register_attack("largest")
def keep_largest(ctx: AttackContext) -> Guess:
    return Guess("keep k largest", largest_scores(ctx.target))


@register_attack("smallest")
def keep_smallest(ctx: AttackContext) -> Guess:
    return Guess("keep k smallest", smallest_scores(ctx.target))


@register_attack("magnitude", trained=True)
def magnitude_likelihood(ctx: AttackContext) -> Guess:
    own = ctx.own_records()
    scores = MagnitudeLikelihood.fit(own).scores(ctx.target)
    return Guess("magnitude LR", scores, f"fit on {len(own.values)} own items")
