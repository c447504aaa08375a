"""The owner's secret map from a code to its decoys: release-stable randomness.

A record's fakes must be a function of the image's code and the owner secret, not of
the item id (the same image under two ids would otherwise publish two fake sets whose
intersection is the key), and they must change little when the code changes little (a
re-saved or slightly shifted copy would otherwise do the same). So every random choice
of the mechanism is read off *decoy bottlenecks*: secret isometries of the item's own
bottleneck vector h.

In the noise fit's principal coordinates g = V (h - mean) / sigma (unit variance each),
a decoy is ``mean + sigma V^T (Q g) + rstd * (S P e)``: Q is a random orthogonal matrix
(acting within bands of consecutive components, see ``BANDS``), e the whitened residual
outside the principal subspace, P a permutation of residual coordinates (within windows
of similar spread) and S random signs. A decoy has the distribution of real bottlenecks
(to the Gaussian fit's accuracy) and moves when h moves: near-duplicates get
near-identical decoys, and two photos of one person decoys about as alike as the
photos. To anyone without the secret, Q g looks like an independent synthetic face.

The seed of Q, P and S is HMAC(owner secret, model id) (``imambig.access.secrets``):
one map per owner and model, and the map is built once per process.
"""

from __future__ import annotations

import copy
from typing import Protocol

import numpy as np
import torch

from imambig.access.secrets import Secret, decoy_seed, reveal, seal_key, seeded_rng
from imambig.mechanism import exact_float

Coordinates = tuple[torch.Tensor, torch.Tensor]  # (g, e): see DecoyMap.coordinates
BAND = 8  # neighbouring principal components (and residual coordinates) mixed together
UNIFORMS = 4  # per (map, position): three for a fake's magnitude, one for its sign flip


class Fit(Protocol):
    """What a map is built from: a noise fit's principal coordinates
    (``imambig.mechanism.noise_model.NoiseModel`` has them)."""

    model_id: str
    mean: np.ndarray
    components: np.ndarray
    residual_std: np.ndarray
    position_freq: np.ndarray


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random n x n orthogonal matrix (Haar), by Gram-Schmidt in float64: plain
    element-wise arithmetic, so every machine builds the same bits."""
    a = rng.standard_normal((n, n))
    q = np.zeros_like(a)
    for i in range(n):
        v = a[i].copy()
        for j in range(i):
            v -= np.sum(v * q[j]) * q[j]
        q[i] = v / np.sqrt(np.sum(v * v))
    return q


class DecoyMap:
    """The owner's secret isometry of the bottleneck, and secret projections of it."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, residual_std: np.ndarray,
                 n_maps: int, code_length: int, rng: np.random.Generator,
                 seal_key: bytes) -> None:
        self.seal_key = seal_key  # the owner's, for the records' seals
        sigma = np.linalg.norm(components.astype(np.float64), axis=1)
        self.mean = torch.from_numpy(mean.astype(np.float32))
        self.sigma = torch.from_numpy(sigma.astype(np.float32))
        self.basis = torch.from_numpy((components / sigma[:, None]).astype(np.float32))
        self.rstd = torch.from_numpy(np.maximum(residual_std, 1e-8).astype(np.float32))
        r, d = components.shape
        q = np.zeros((r, r))
        for s in range(0, r, BAND):
            q[s : s + BAND, s : s + BAND] = _orthogonal(rng, min(BAND, r - s))
        order = np.argsort(residual_std, kind="stable")  # residual coordinates by spread
        perm = np.empty(d, dtype=np.int64)
        for s in range(0, d, BAND):
            window = order[s : s + BAND]
            perm[window] = window[rng.permutation(len(window))]
        self.rotation = torch.from_numpy(q.astype(np.float32))
        self.perm = torch.from_numpy(perm)
        self.signs = torch.from_numpy(rng.choice([-1.0, 1.0], d).astype(np.float32))
        # Random unit directions in the principal coordinates, one per uniform: a
        # projection of g on one has unit variance whatever the position, and nothing to
        # do with the code's own value there (unlike a decoy's code read at the fake).
        dirs = rng.standard_normal((UNIFORMS * n_maps * code_length, r))
        dirs /= np.sqrt(np.sum(dirs * dirs, axis=1, keepdims=True))
        self.directions = torch.from_numpy(dirs.astype(np.float32))
        self.shape = (UNIFORMS, n_maps, code_length)
        # Encoding's right-hand operands, converted once (exact_float)
        self._exact = {name: exact_float.Operand(m) for name, m in (
            ("to_g", self.basis.T), ("from_g", self.basis), ("rotate", self.rotation.T),
            ("project", self.directions.T))}

    @classmethod
    def for_owner(cls, noise: Fit, owner_secret: Secret | bytes) -> DecoyMap:
        return cls.from_seeds(noise, decoy_seed(owner_secret, noise.model_id),
                              seal_key(owner_secret, noise.model_id))

    @classmethod
    def from_seeds(cls, noise: Fit, seed: Secret | bytes,
                   seal: Secret | bytes) -> DecoyMap:
        """The map of the owner whose secret gives ``seed`` (:func:`decoy_seed`) and
        ``seal`` (:func:`seal_key`) for the noise fit's model: what a worker is sent
        instead of the owner secret itself."""
        L, m = noise.position_freq.shape
        return cls(noise.mean, noise.components, noise.residual_std, L, m,
                   seeded_rng(seed), reveal(seal))

    def to(self, device: torch.device | str) -> DecoyMap:
        """This map with its tensors on ``device`` (made once per device, then kept)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.mean.device == device:
            return self
        moved = self.__dict__.setdefault("_moved", {})
        if device not in moved:
            other = copy.copy(self)
            for name, value in vars(self).items():
                if isinstance(value, torch.Tensor):
                    setattr(other, name, value.to(device))
            other._exact = {k: v.to(device) for k, v in self._exact.items()}
            other._moved = moved
            moved[device] = other
        return moved[device]

    def _mm(self, x: torch.Tensor, name: str, exact: bool) -> torch.Tensor:
        if exact:
            return exact_float.matmul(x, self._exact[name])
        return x @ {"to_g": self.basis.T, "from_g": self.basis, "rotate": self.rotation.T,
                    "project": self.directions.T}[name]

    def coordinates(self, h: torch.Tensor, exact: bool = True) -> Coordinates:
        """Principal coordinates g (B, r) and whitened residual e (B, L*n) of ``h``: what
        :meth:`decoy` and :meth:`projections_at` read, computed once for both."""
        c = h.flatten(1).float() - self.mean
        g = self._mm(c, "to_g", exact) / self.sigma
        return g, (c - self._mm(g * self.sigma, "from_g", exact)) / self.rstd

    def decoy(self, h: torch.Tensor, exact: bool = True,
              coordinates: Coordinates | None = None) -> torch.Tensor:
        """(B, L, n) bottlenecks -> decoy bottlenecks (B, L, n). ``exact`` (encoding)
        rounds every product correctly, the same bits on every machine
        (``imambig.mechanism.exact_float``); the noise fit takes the float32 kernels'
        products, as its stored files always had. ``coordinates``: ``h``'s, if known."""
        g, e = coordinates if coordinates is not None else self.coordinates(h, exact)
        rotated = self._mm(g, "rotate", exact) * self.sigma
        d = self.mean + self._mm(rotated, "from_g", exact)
        return (d + self.rstd * e[:, self.perm] * self.signs).view_as(h)

    def _unit(self, g: torch.Tensor, exact: bool) -> torch.Tensor:
        """g scaled to norm sqrt(r): an unusual face (large |g|) would otherwise give all
        its fakes unusually spread magnitudes."""
        norm = exact_float.row_norm(g) if exact else g.norm(dim=1, keepdim=True)
        return g * (g.shape[1] ** 0.5 / norm.clamp_min(1e-12))

    def projections(self, h: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """(B, L, n) -> (B, UNIFORMS, L, m) scores, about N(0, 1) over directions for
        every single item. ``exact`` as for :meth:`decoy`."""
        g = self._unit(self.coordinates(h, exact)[0], exact)
        return self._mm(g, "project", exact).view(len(h), *self.shape)

    def projections_at(self, h: torch.Tensor, positions: torch.Tensor,
                       coordinates: Coordinates | None = None) -> torch.Tensor:
        """:meth:`projections` (exact) read at ``positions`` (B, L, f) of every map:
        (B, UNIFORMS, L, f), the same numbers, with only these entries rounded."""
        g, _ = coordinates if coordinates is not None else self.coordinates(h)
        B, L, f = positions.shape
        m = self.shape[2]
        at = (torch.arange(UNIFORMS * L, device=positions.device).view(1, UNIFORMS, L, 1) * m
              + positions.unsqueeze(1))
        values = exact_float.matmul_at(self._unit(g, True), self._exact["project"],
                                       at.reshape(B, -1))
        return values.view(B, UNIFORMS, L, f)
