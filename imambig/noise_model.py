"""The noise model: what real codes look like, fitted on training images.

Fakes come from a *decoy*: a synthetic bottleneck vector ``a`` drawn from the fitted
distribution of real ones. Its fakes are the largest entries of ``W a`` outside the real
support, scaled by one factor per map so their magnitudes match the real ones. So the
fakes, like the real entries, are exactly a linear image of one plausible bottleneck
vector (a linear-consistency attack finds two explanations, not one), their magnitudes
follow the real distribution, and the public code decodes to a blend with a synthetic
face rather than to the image. Fitted here, per model:

- the distribution of bottleneck vectors over all maps jointly: mean, top principal
  directions and a residual per-coordinate spread (a low-rank Gaussian), so a decoy is
  one coherent synthetic face, never another person's code;
- per code-map, quantiles of real non-zero magnitudes and how often each position is in
  the real support (for reports and for the attacks that test the design).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np
import torch

from imambig.models.autoencoder import SparseAutoencoder
from imambig.storage import filesystem, write_bytes

N_QUANTILES = 257
MAX_COMPONENTS = 256


@dataclass(frozen=True)
class NoiseModel:
    model_id: str
    k: int
    k_public: int
    mean: np.ndarray  # (L*n,) mean bottleneck vector
    components: np.ndarray  # (r, L*n) principal directions scaled by their std
    residual_std: np.ndarray  # (L*n,) spread left after the r components
    probs: np.ndarray  # (Q,) quantile levels
    real_quantiles: np.ndarray  # (L, Q) of |real non-zero|
    position_freq: np.ndarray  # (L, m) P(position in real support)
    # (L, m) multipliers of |W a| when choosing fake positions, fitted so that fakes land
    # on each position as often as real entries do: P(real | position) stays flat.
    position_weights: np.ndarray

    @property
    def n_maps(self) -> int:
        return self.real_quantiles.shape[0]

    def sample_decoys(self, rngs: list[np.random.Generator]) -> np.ndarray:
        """One decoy bottleneck (L*n,) per generator, float32 (B, L*n)."""
        r, d = self.components.shape
        out = np.empty((len(rngs), d), np.float32)
        for i, rng in enumerate(rngs):
            g = rng.standard_normal(r + d, dtype=np.float32)
            out[i] = self.mean + g[:r] @ self.components + g[r:] * self.residual_std
        return out

    # -- persistence ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NoiseModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            kw = {f.name: z[f.name] for f in fields(cls)}
        kw["model_id"] = str(kw["model_id"])
        kw["k"], kw["k_public"] = int(kw["k"]), int(kw["k_public"])
        return cls(**kw)

    def save(self, url: str, storage_options: dict | None = None) -> None:
        write_bytes(url, self.to_bytes(), storage_options)

    @classmethod
    def load(cls, url: str, storage_options: dict | None = None) -> NoiseModel:
        fs, path = filesystem(url, storage_options)
        if not fs.exists(path):
            raise FileNotFoundError(f"no noise model at {url} (fit one with `imambig fit-noise`)")
        return cls.from_bytes(fs.cat_file(path))


@torch.no_grad()
def fit_noise_model(
    model: SparseAutoencoder,
    model_id: str,
    batches: Iterable[torch.Tensor],
    k_public: int,
    max_components: int = MAX_COMPONENTS,
) -> NoiseModel:
    """Fit on training images (an iterable of (B, 3, H, W) float batches in [0, 1])."""
    c = model.config
    if not c.k < k_public <= c.code_length:
        raise ValueError(f"k_public must be in ({c.k}, {c.code_length}], got {k_public}")
    model.eval()
    hs, mags, support = [], [], torch.zeros(c.n_maps, c.code_length, dtype=torch.float64)
    for x in batches:
        h = model.bottleneck(x)
        z = model.linear(h)
        idx = z.abs().topk(c.k, dim=-1).indices
        hs.append(h.flatten(1).double())
        mags.append(z.gather(-1, idx).abs().transpose(0, 1).reshape(c.n_maps, -1))
        support += torch.zeros_like(z, dtype=torch.float64).scatter(-1, idx, 1.0).sum(0)
    if not hs:
        raise ValueError("no training images to fit the noise model on")
    H = torch.cat(hs)
    n_items = len(H)
    mean = H.mean(0)
    centred = H - mean
    r = max(1, min(max_components, n_items - 1))
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    components = (v[:r] * (s[:r, None] / max(1, n_items - 1) ** 0.5)).float()
    residual = centred - (centred @ v[:r].T) @ v[:r]
    residual_std = residual.std(0).float()

    probs = np.linspace(0.0, 1.0, N_QUANTILES)
    real_q = np.quantile(torch.cat(mags, 1).numpy(), probs, axis=1).T
    position_freq = (support / n_items).float()
    weights = fit_position_weights(
        model, H.float().view(n_items, c.n_maps, c.bottleneck_size), mean.float(),
        components, residual_std, position_freq, c.k, k_public - c.k,
    )
    return NoiseModel(
        model_id=model_id, k=c.k, k_public=k_public, mean=mean.float().numpy(),
        components=components.numpy(), residual_std=residual_std.numpy(), probs=probs,
        real_quantiles=real_q,
        position_freq=position_freq.numpy(), position_weights=weights.numpy(),
    )


def fit_position_weights(
    model: SparseAutoencoder,
    h: torch.Tensor,
    mean: torch.Tensor,
    components: torch.Tensor,
    residual_std: torch.Tensor,
    position_freq: torch.Tensor,
    k: int,
    n_fake: int,
    iterations: int = 30,
    seed: int = 0,
) -> torch.Tensor:
    """Weights w (L, m) such that choosing fakes as the largest ``w * |W a|`` outside the
    real support puts fakes on each position with the real frequency. Without them, the
    positions real codes use most are the ones most often taken by the real support,
    hence least often free for fakes, and position alone tells real from fake."""
    gen = torch.Generator().manual_seed(seed)
    n, L, nb = h.shape
    g = torch.randn(n, components.shape[0], generator=gen)
    decoys = mean + g @ components + torch.randn(n, L * nb, generator=gen) * residual_std
    support_dense = model.linear(h)
    support = torch.zeros_like(support_dense, dtype=torch.bool).scatter(
        -1, support_dense.abs().topk(k, dim=-1).indices, True)
    score = model.linear(decoys.view(n, L, nb)).abs()
    target = position_freq.clamp_min(1.0 / n)  # fakes per position we want, per item
    w = torch.ones_like(position_freq)
    for _ in range(iterations):
        idx = (score * w).masked_fill(support, -1.0).topk(n_fake, dim=-1).indices
        freq = torch.zeros_like(score).scatter(-1, idx, 1.0).mean(0) * (k / n_fake)
        w = w * (target / freq.clamp_min(0.5 / n)).pow(0.5)
        w = w / w.mean(-1, keepdim=True)
    return w
