"""The noise model: what real codes look like, fitted on training images.

An entry of a public map is (position, sign, magnitude). A fake must be drawn so that
none of these, alone or together, says whether it is real; the attack suite's
discriminator finds any joint difference. Fitted here, per model:

- the principal coordinates of training bottlenecks (mean, principal directions,
  residual spread), which the owner's secret decoy map (``imambig.mechanism.decoy_map``)
  uses to turn an item's own bottleneck into decoys: secret isometries of it, each a
  synthetic face to anyone without the secret. A decoy is pushed through the encoder's
  last linear layer and then, per (map, position), through a Gaussian copula onto the
  real codes' own marginal at that position (``dense_quantiles``); it chooses the
  fakes' positions and signs, so the public code decodes to a blend with a synthetic
  face rather than to the image. The map's secret projections of the item's principal
  coordinates give, through their empirical distribution (``projection_cdf``), the
  uniforms that draw the fakes' magnitudes and sign flips;
- ``position_weights``: multipliers of the decoy's magnitudes when choosing fake
  positions, fitted so that fakes land on each position as often as real entries do
  (P(real | position) stays flat where that is possible at all);
- a per-position magnitude model: real magnitudes written as threshold + item excess
  scale * exp(location[position] + residual), with the residual's quantiles per map. A
  fake's magnitude is drawn from it, so magnitudes depend on position and on the item's
  own scale exactly as real ones do, and never fall below the item's threshold;
- per code-map quantiles of real non-zero magnitudes and how often each position is in
  the real support (for reports).
"""

from __future__ import annotations

import io
import math
import struct
import tokenize
import weakref
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import IO, Any

import numpy as np
import numpy.lib.format as npy_format
import torch

from imambig.config import ModelConfig
from imambig.errors import FormatError
from imambig.mechanism import exact_float
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.sorting import kth_largest
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import autocast
from imambig.stores.location import Location

# Bumped whenever fakes are drawn differently: noise files and store versions carry it.
# 3: randomness read off secret isometries of the item's own code (release-stable), no
# sign flips, 3-bit value mantissas. 4: records sealed (imambig.mechanism.seal).
NOISE_DESIGN = 4
N_QUANTILES = 257
MAX_COMPONENTS = 256
GRID = np.linspace(-3.1, 3.1, 101)  # normal scores of the copula (quantiles 0.1%..99.9%)
RESIDUAL_LEVELS = np.linspace(0.0005, 0.9995, 101)
SHRINK = 10.0  # pseudo-items pulling a rarely real position's location to its map's
CALIBRATION = 0.25  # share of the fit's items held out of the basis, for decoy statistics
# The fit draws decoys with a public key: their distribution, not their values, matters.
FIT_KEY = b"imambig/noise-fit/v1: the decoy distribution, fitted in the open"


# A fit's arrays as tensors, per (fit, device): converted once, dropped with the fit.
_TABLES: dict[tuple[int, torch.device], dict[str, torch.Tensor]] = {}


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
    decoy_mean: np.ndarray  # (L, m) mean of W a over decoys a
    decoy_std: np.ndarray  # (L, m) its spread: standardizes W a into normal scores
    dense_quantiles: np.ndarray  # (L, m, G) real dense code at the normal scores GRID
    projection_cdf: np.ndarray  # (G,) share of decoy-map projections below each GRID score
    position_weights: np.ndarray  # (L, m) see the module docstring
    excess_location: np.ndarray  # (L, m) mean log normalized excess of real entries
    excess_spread: np.ndarray  # (L, m) scale of the residual per position
    excess_residual: np.ndarray  # (L, R) quantiles of residual / spread, RESIDUAL_LEVELS
    # Where fakes cannot be as frequent as real entries (positions real in most items),
    # other positions get the surplus; a fake there borrows, with probability
    # ``borrow[position]``, the magnitude location of a position drawn from
    # ``borrow_cdf`` (the shortfall), so each map's magnitude mix still matches.
    borrow: np.ndarray  # (L, m)
    borrow_cdf: np.ndarray  # (L, m)
    # Decoy signs are right on average but not once selected; flipping a few per
    # position (+ to - with flip_pos, - to + with flip_neg) makes P(+ | fake, position)
    # that of real entries there.
    flip_pos: np.ndarray  # (L, m)
    flip_neg: np.ndarray  # (L, m)

    def fake_values(self, model: SparseAutoencoder, decoy_map: DecoyMap, h: torch.Tensor,
                    threshold: torch.Tensor, excess_scale: torch.Tensor,
                    support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, L, f) and signed values of the fakes of bottlenecks ``h``
        (B, L, n), from the owner's ``decoy_map`` (the item's decoy chooses positions and
        signs, its projections the uniforms), the real ``support`` (B, L, m) and the
        item's own ``threshold`` and ``excess_scale`` (B, L, 1); on ``h``'s device."""
        t = self.tables(h.device)
        n_fake = self.k_public - self.k
        coordinates = decoy_map.coordinates(h)
        code = self.decoy_codes(model, decoy_map.decoy(h, coordinates=coordinates))
        positions = top_positions((code.abs() * t["position_weights"]).masked_fill(support, -1.0),
                                  n_fake)
        u = self.uniforms(decoy_map.projections_at(h, positions, coordinates))
        magnitudes = self.fake_magnitudes(threshold, excess_scale, positions,
                                          torch.cat(u[:, :3].unbind(1), -1))
        signs = self.fake_signs(code.gather(-1, positions).sign(), positions, u[:, 3])
        return positions, signs * magnitudes

    def tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The fit's arrays as float32/float64 tensors on ``device``, made once each."""
        key = (id(self), device)
        if key not in _TABLES:
            _TABLES[key] = {f.name: torch.from_numpy(getattr(self, f.name)).to(device)
                            for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)
                            and getattr(self, f.name).dtype.kind == "f"}
            weakref.finalize(self, _TABLES.pop, key, None)
        return _TABLES[key]

    def fake_signs(self, decoy_signs: torch.Tensor, positions: torch.Tensor,
                   u: torch.Tensor) -> torch.Tensor:
        """Signs (B, L, f) for fakes at ``positions`` from the decoy's, uniforms ``u``."""
        t = self.tables(positions.device)
        B = positions.shape[0]
        p = t["flip_pos"].expand(B, -1, -1).gather(-1, positions)
        q = t["flip_neg"].expand(B, -1, -1).gather(-1, positions)
        flip = torch.where(decoy_signs > 0, u < p, u < q)
        return torch.where(flip, -decoy_signs, decoy_signs)

    @property
    def n_maps(self) -> int:
        return self.real_quantiles.shape[0]

    def decoy_codes(self, model: SparseAutoencoder, decoys: torch.Tensor) -> torch.Tensor:
        """(B, L, n) decoys -> (B, L, m) synthetic dense codes with the real marginals."""
        t = self.tables(decoys.device)
        zd = exact_float.grouped_linear(decoys.view(len(decoys), self.n_maps, -1),
                                        model.linear.weight)
        score = (zd - t["decoy_mean"]) / t["decoy_std"]
        score = score.clamp(float(GRID[0]), float(GRID[-1]))
        return _lookup(t["dense_quantiles"], score)

    def uniforms(self, projections: torch.Tensor) -> torch.Tensor:
        """Projections (``DecoyMap.projections``) -> numbers in [0, 1], uniform over
        items and as continuous in the code as the projections are."""
        score = projections.clamp(float(GRID[0]), float(GRID[-1]))
        u = (score - float(GRID[0])) / float(GRID[-1] - GRID[0])
        table = self.tables(projections.device)["projection_cdf"]
        return interpolate(table.expand(*u.shape, -1), u.unsqueeze(-1)).squeeze(-1)

    def fake_magnitudes(self, threshold: torch.Tensor, excess_scale: torch.Tensor,
                        positions: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Magnitudes for fakes at ``positions`` (B, L, f), from uniforms ``u`` (B, L, 3f);
        ``threshold`` and ``excess_scale`` (B, L, 1) are the item's own."""
        t = self.tables(positions.device)
        B, _, f = positions.shape
        u_resid, u_borrow, u_from = u[..., :f], u[..., f : 2 * f], u[..., 2 * f : 3 * f]
        borrow = t["borrow"].expand(B, -1, -1).gather(-1, positions)
        cdf = t["borrow_cdf"].contiguous()
        lender = torch.searchsorted(cdf.expand(B, -1, -1).contiguous(), u_from.contiguous())
        source = torch.where(u_borrow < borrow, lender.clamp_max(cdf.shape[-1] - 1), positions)
        loc = t["excess_location"].expand(B, -1, -1).gather(-1, source)
        spread = t["excess_spread"].expand(B, -1, -1).gather(-1, source)
        resid = spread * interpolate(t["excess_residual"].expand(B, -1, -1), u_resid)
        return threshold + excess_scale * exact_float.exp(loc + resid)

    # -- persistence ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, config: ModelConfig | None = None,
                   what: str = "noise file") -> NoiseModel:
        """Parse a noise file (see ``_read_members``); ``FormatError`` naming ``what``
        unless it is one, for a model of ``config`` when given."""
        kw: dict[str, Any] = _read_members(data, config, what)
        kw["model_id"] = str(kw["model_id"][()])
        kw["k"], kw["k_public"] = int(kw["k"][()]), int(kw["k_public"][()])
        m = kw["position_freq"].shape[1]
        if not 0 < kw["k"] <= kw["k_public"] <= m or (
                config is not None and kw["k"] != config.k):
            raise FormatError(f"{what}: k={kw['k']}, k'={kw['k_public']} do not fit its "
                              f"{m} positions{'' if config is None else f' or k={config.k}'}")
        return cls(**kw)

    def save(self, location: Location) -> None:
        location.write_bytes(self.to_bytes())

    @classmethod
    def load(cls, location: Location, config: ModelConfig | None = None) -> NoiseModel:
        """The noise file at ``location``, read up to the size a fit of ``config`` can
        have (``file_limit``) and parsed by ``from_bytes``."""
        data = location.read_bytes(limit=file_limit(config))
        if data is None:
            raise FileNotFoundError(f"no noise model at {location} (`imambig encode` fits one "
                                    "on the image store's training split)")
        return cls.from_bytes(data, config, str(location))


# ---------------------------------------------------------------------------
# The noise file, parsed without trusting it
# ---------------------------------------------------------------------------
#
# A noise file is numpy's .npz: a zip of one .npy member per field. It lies in a model
# folder others may write, and numpy's own loader allocates whatever a member's header
# claims (2^34 floats: a MemoryError) and lets zip errors out. So the zip directory is
# checked first (small, few entries), then every member's .npy header against the shape
# the field must have, and only then are exactly that many bytes read.

NOISE_FILE_LIMIT = 512 << 20  # without a model config to size a fit (the paper's: ~10 MB)
_DIRECTORY_LIMIT = 64 << 10  # the zip's central directory: some 2 kB for 23 members
_MAX_MEMBERS = 64
_NPY_HEADER_LIMIT = 4096  # numpy writes 128 bytes
_KINDS = {"float": ("<f4", "<f8"), "int": ("<i8", "<i4"), "str": ()}
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
               RuntimeError, KeyError, TypeError, SyntaxError, OverflowError, struct.error,
               zlib.error, tokenize.TokenError)


def _layout(L: int, m: int, D: int) -> dict[str, tuple[str, tuple[int | None, ...]]]:
    """(kind, shape) of every field for L maps of m positions and a bottleneck of D
    values; ``None``: the number of principal components, 1..min(MAX_COMPONENTS, D)."""
    per_position = ("float", (L, m))
    layout: dict[str, tuple[str, tuple[int | None, ...]]] = {
        "model_id": ("str", ()), "k": ("int", ()), "k_public": ("int", ()),
        "mean": ("float", (D,)), "components": ("float", (None, D)),
        "residual_std": ("float", (D,)), "probs": ("float", (N_QUANTILES,)),
        "real_quantiles": ("float", (L, N_QUANTILES)),
        "dense_quantiles": ("float", (L, m, len(GRID))),
        "projection_cdf": ("float", (len(GRID),)),
        "excess_residual": ("float", (L, len(RESIDUAL_LEVELS))),
    }
    for f in fields(NoiseModel):
        layout.setdefault(f.name, per_position)
    return layout


def file_limit(config: ModelConfig | None) -> int:
    """The most bytes a noise file of a model of ``config`` can hold: its fields
    uncompressed as float64 with every principal component, plus the zip's overhead."""
    if config is None:
        return NOISE_FILE_LIMIT
    L, m = config.n_maps, config.code_length
    r = min(MAX_COMPONENTS, L * config.bottleneck_size)
    total = sum(8 * math.prod(r if d is None else d for d in shape) + 256
                for _, shape in _layout(L, m, L * config.bottleneck_size).values())
    return min(NOISE_FILE_LIMIT, total + len(fields(NoiseModel)) * (_NPY_HEADER_LIMIT + 256))


def _directory(data: bytes, what: str) -> None:
    """Refuse a zip whose central directory is large or zip64 before ``zipfile`` parses
    it (it builds an object per entry, whatever their number). The end record is found
    the way ``zipfile`` finds it."""
    end = b"PK\x05\x06"
    if len(data) >= 22 and data[-22:-18] == end and data[-2:] == b"\0\0":
        at = len(data) - 22
    else:
        at = data.rfind(end, max(0, len(data) - (1 << 16) - 22))
    if at < 0 or at + 22 > len(data):
        raise FormatError(f"{what} is not a noise model file (no zip directory; truncated?)")
    _, disk, disk_cd, here, total, size, _, _ = struct.unpack_from("<4s4H2LH", data, at)
    if at >= 20 and data[at - 20 : at - 16] == b"PK\x06\x07":
        raise FormatError(f"{what}: a zip64 directory; noise files never need one")
    if disk or disk_cd or here != total or total > _MAX_MEMBERS or size > _DIRECTORY_LIMIT:
        raise FormatError(f"{what}: zip directory of {total} entries in {size:,} bytes "
                          "is not a noise file's")


def _npy_header(member: IO[bytes]) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """dtype, shape, Fortran order and header length of the .npy stream ``member``
    (nothing else read)."""
    version = npy_format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(member, _NPY_HEADER_LIMIT)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(member, _NPY_HEADER_LIMIT)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return dtype, tuple(shape), bool(fortran), member.tell()


def _read_members(data: bytes, config: ModelConfig | None, what: str) -> dict[str, np.ndarray]:
    """Every field's array, each checked against its expected kind and shape (for
    ``config``'s model, or consistent with one another) before its bytes are read."""
    _directory(data, what)
    names = [f.name for f in fields(NoiseModel)]
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = {i.filename: i for i in z.infolist()}
            missing = [n for n in names if f"{n}.npy" not in members]
            if missing:
                raise FormatError(f"{what}: noise model file lacks {', '.join(missing)}: it "
                                  "was written by another noise design")
            if len(members) != len(names):
                raise FormatError(f"{what}: holds members other than a noise model's")
            heads = {}
            for n in names:
                info = members[f"{n}.npy"]
                if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED,
                                                                     zipfile.ZIP_DEFLATED):
                    raise FormatError(f"{what}: member {n} is encrypted or compressed "
                                      "unusually")
                with z.open(info) as member:
                    heads[n] = _npy_header(member)
            layout = _expected(heads, config, what)
            out = {}
            for n in names:
                dtype, shape, fortran, offset = heads[n]
                kind, expected = layout[n]
                _check_member(n, dtype, shape, kind, expected, what)
                size = math.prod(shape) * dtype.itemsize
                if offset + size != members[f"{n}.npy"].file_size:
                    raise FormatError(f"{what}: member {n} holds other than {shape} {dtype}")
                buffer = bytearray(size)
                with z.open(members[f"{n}.npy"]) as member:
                    member.read(offset)
                    # The last byte read checks the member's CRC: a changed byte ends here.
                    if member.readinto(buffer) != size or member.read(1):
                        raise FormatError(f"{what}: member {n} is truncated or too long")
                flat = np.frombuffer(buffer, dtype)
                out[n] = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
            return out
    except FormatError:
        raise
    except _ZIP_ERRORS as exc:  # a zip or .npy that does not parse
        raise FormatError(f"{what} is not a readable noise model file "
                          f"({type(exc).__name__}: {str(exc)[:120]})") from None


def _expected(heads: dict[str, tuple[np.dtype, tuple[int, ...], bool, int]],
              config: ModelConfig | None, what: str
              ) -> dict[str, tuple[str, tuple[int | None, ...]]]:
    """The layout the members must have: ``config``'s, else the one their own
    ``position_freq`` and ``mean`` claim, bounded in total by ``NOISE_FILE_LIMIT``."""
    if config is not None:
        return _layout(config.n_maps, config.code_length,
                       config.n_maps * config.bottleneck_size)
    per_position, mean = heads["position_freq"][1], heads["mean"][1]
    if len(per_position) != 2 or len(mean) != 1:
        raise FormatError(f"{what}: position_freq or mean has the wrong rank")
    layout = _layout(*per_position, *mean)
    r = min(MAX_COMPONENTS, mean[0])
    total = sum(8 * math.prod(r if d is None else d for d in shape)
                for _, shape in layout.values())
    if total > NOISE_FILE_LIMIT:
        raise FormatError(f"{what} claims {total:,} bytes of arrays, over the "
                          f"{NOISE_FILE_LIMIT:,} limit")
    return layout


def _check_member(name: str, dtype: np.dtype, shape: tuple[int, ...], kind: str,
                  expected: tuple[int | None, ...], what: str) -> None:
    r_max = min(MAX_COMPONENTS, expected[-1] or 0) if name == "components" else 0
    fits = len(shape) == len(expected) and all(
        (1 <= got <= r_max) if want is None else got == want
        for got, want in zip(shape, expected, strict=True))
    typed = (dtype.kind == "U" and 0 < dtype.itemsize <= 4 * 64 if kind == "str"
             else dtype.str in _KINDS[kind])
    if not fits or not typed:
        raise FormatError(f"{what}: member {name} is {shape} {dtype.str}, expected "
                          f"{tuple('r' if d is None else d for d in expected)} {kind}")


def interpolate(table: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear lookup: ``table`` (..., T) at fractional positions ``u`` in [0, 1]
    along its last axis, for every leading index (``u`` is (..., f))."""
    t = table.shape[-1]
    x = u.clamp(0.0, 1.0) * (t - 1)
    lo = x.floor().long().clamp_max(t - 2)
    frac = x - lo
    return table.gather(-1, lo) * (1 - frac) + table.gather(-1, lo + 1) * frac


def _lookup(table: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Per (map, position), ``table`` (L, m, G) read at normal ``score`` (B, L, m) on the
    GRID: the copula onto a position's real marginal, or a decoy's own CDF."""
    u = (score - float(GRID[0])) / float(GRID[-1] - GRID[0])
    B = score.shape[0]
    return interpolate(table.expand(B, -1, -1, -1), u.unsqueeze(-1)).squeeze(-1)


def top_positions(x: torch.Tensor, k: int, kth: torch.Tensor | None = None) -> torch.Tensor:
    """Positions (..., k) of the ``k`` largest entries along the last axis, increasing;
    of equal entries at the boundary the lower positions. Only the k-th largest value
    (``kth``, (..., 1), if known) is looked up: values, unlike indices, do not depend on
    how a device breaks ties, so every device selects the same positions."""
    if k == 0:  # k' = k: no fakes
        return torch.zeros((*x.shape[:-1], 0), dtype=torch.long, device=x.device)
    if kth is None:
        (kth,) = kth_largest(x, (k,))
    above = x > kth
    tied = x == kth
    # of the tied entries, as many of the lowest as the k entries still lack
    chosen = above | (tied & (tied.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
    where = chosen.nonzero()
    if len(where) != chosen.shape[:-1].numel() * k:
        raise ValueError("codes with non-finite entries have no top-k (NaN bottlenecks?)")
    return where[:, -1].view(*x.shape[:-1], k)


def real_support(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of a dense code: (indices (B, L, k), values there, threshold (B, L, 1) = the
    largest magnitude left out). Real entries are threshold + a positive excess."""
    a = z.abs()
    kth, threshold = kth_largest(a, (k, k + 1))
    idx = top_positions(a, k, kth)
    return idx, z.gather(-1, idx), threshold


@torch.no_grad()
def fit_noise_model(
    model: SparseAutoencoder,
    model_id: str,
    batches: Iterable[torch.Tensor],
    k_public: int,
    max_components: int = MAX_COMPONENTS,
    precision: str = "fp32",
) -> NoiseModel:
    """Fit on training images (an iterable of (B, 3, H, W) float batches in [0, 1]),
    their bottlenecks computed at ``precision`` (the encoder's, resolved)."""
    c = model.config
    if not c.k <= k_public <= c.code_length:
        raise ValueError(f"k_public must be in [{c.k}, {c.code_length}], got {k_public}")
    model.eval()
    hs = []
    for x in batches:
        with autocast(precision):
            hs.append(model.bottleneck(x).float())
    if not hs:
        raise ValueError("no training images to fit the noise model on")
    h = torch.cat(hs)
    n_items, L, m, k = len(h), c.n_maps, c.code_length, c.k
    z = model.linear(h)
    # Entries in topk's order (largest first): the sums below run in this order, as
    # they did when the stored fits were made.
    top = z.abs().topk(k + 1, dim=-1)
    idx, thr = top.indices[..., :k], top.values[..., k:]
    vals = z.gather(-1, idx)
    support = torch.zeros_like(z, dtype=torch.bool).scatter(-1, idx, True)

    # Principal coordinates, on all but the last CALIBRATION share of the items. The
    # decoys of encoding come from images the basis never saw, whose coordinates spread
    # differently (measured: 1.4x the residual variance); so every statistic of decoys is
    # taken on the held-out items, as encoding will meet them.
    n_basis = max(2, n_items - int(n_items * CALIBRATION))
    held = slice(n_basis, None) if n_basis < n_items else slice(None)
    H = h[:n_basis].flatten(1).double()
    mean = H.mean(0)
    centred = H - mean
    r = max(1, min(max_components, n_basis - 1))
    _, sv, v = torch.linalg.svd(centred, full_matrices=False)
    r = min(r, len(v))
    components = (v[:r] * (sv[:r, None] / max(1, n_basis - 1) ** 0.5)).float()
    residual = centred - (centred @ v[:r].T) @ v[:r]
    residual_std = residual.std(0).float()
    # Decoys as encoding makes them (the public key gives a map like any owner's): their
    # statistics, and how they meet those items' supports.
    fit_map = DecoyMap(mean.float().numpy(), components.numpy(), residual_std.numpy(), L, m,
                       np.random.default_rng(list(FIT_KEY)), FIT_KEY)
    # The fit keeps the float32 kernels' products (exact=False): its files were always
    # made so, and a file once written is what encoding reads.
    zd = model.linear(fit_map.decoy(h[held], exact=False))
    decoy_mean, decoy_std = zd.mean(0), zd.std(0).clamp_min(1e-8)
    proj = fit_map.projections(h[held], exact=False).flatten().numpy()
    projection_cdf = np.searchsorted(np.sort(proj), GRID, side="right") / len(proj)
    levels = torch.distributions.Normal(0.0, 1.0).cdf(torch.from_numpy(GRID)).numpy()
    dense_q = np.quantile(z.numpy(), levels, axis=0).transpose(1, 2, 0)  # (L, m, G)
    zc = _lookup(torch.from_numpy(dense_q).float(),
                 ((zd - decoy_mean) / decoy_std).clamp(float(GRID[0]), float(GRID[-1])))

    # Per-position magnitude model of real entries.
    excess = vals.abs() - thr
    log_x = torch.log((excess / excess.mean(-1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-4))
    maps = torch.arange(L)[None, :, None].expand_as(idx)
    total = torch.zeros(L, m, dtype=torch.float64).index_put_(
        (maps.reshape(-1), idx.reshape(-1)), log_x.reshape(-1).double(), accumulate=True)
    count = support.sum(0).double()
    map_mean = log_x.double().mean((0, 2))[:, None]
    location = ((total + SHRINK * map_mean) / (count + SHRINK)).float()
    raw = log_x - location[maps, idx]
    # Positions differ in spread too: a robust scale per position (mean absolute
    # residual), shrunk to its map's like the location.
    abs_total = torch.zeros(L, m, dtype=torch.float64).index_put_(
        (maps.reshape(-1), idx.reshape(-1)), raw.abs().reshape(-1).double(), accumulate=True)
    map_spread = raw.abs().double().mean((0, 2))[:, None]
    spread = ((abs_total + SHRINK * map_spread) / (count + SHRINK)).float()
    resid = (raw / spread[maps, idx]).transpose(0, 1).reshape(L, -1).numpy()
    resid_q = np.quantile(resid, RESIDUAL_LEVELS, axis=1).T

    position_freq = (count / n_items).float()
    weights, fake_freq, fake_pos = fit_position_weights(zc, support[held], position_freq,
                                                        k, k_public - k)
    # P(+) of real entries per position, and of the decoy's selected fakes there.
    real_pos = ((z > 0) & support).sum(0).double() / count.clamp_min(1)  # all items
    real_pos = torch.where(count > 0, real_pos, torch.full_like(real_pos, 0.5)).float()
    flip_pos = ((fake_pos - real_pos).clamp_min(0) / fake_pos.clamp_min(1e-6)).clamp(0, 1)
    flip_neg = ((real_pos - fake_pos).clamp_min(0) / (1 - fake_pos).clamp_min(1e-6)).clamp(0, 1)
    real_share = position_freq / position_freq.sum(-1, keepdim=True)
    fake_share = fake_freq / fake_freq.sum(-1, keepdim=True).clamp_min(1e-12)
    borrow = ((fake_share - real_share).clamp_min(0) / fake_share.clamp_min(1e-12)).clamp(0, 1)
    shortfall = (real_share - fake_share).clamp_min(0) + 1e-12
    borrow_cdf = (shortfall / shortfall.sum(-1, keepdim=True)).cumsum(-1)
    probs = np.linspace(0.0, 1.0, N_QUANTILES)
    mags = vals.abs().transpose(0, 1).reshape(L, -1).numpy()
    return NoiseModel(
        model_id=model_id, k=k, k_public=k_public, mean=mean.float().numpy(),
        components=components.numpy(), residual_std=residual_std.numpy(), probs=probs,
        real_quantiles=np.quantile(mags, probs, axis=1).T,
        position_freq=position_freq.numpy(), decoy_mean=decoy_mean.numpy(),
        decoy_std=decoy_std.numpy(), dense_quantiles=dense_q.astype(np.float32),
        projection_cdf=projection_cdf.astype(np.float32), flip_pos=flip_pos.numpy(), flip_neg=flip_neg.numpy(),
        position_weights=weights.numpy(), excess_location=location.numpy(),
        excess_spread=spread.numpy(), excess_residual=resid_q.astype(np.float32),
        borrow=borrow.float().numpy(), borrow_cdf=borrow_cdf.float().numpy(),
    )


def fit_position_weights(
    decoy_codes: torch.Tensor,
    support: torch.Tensor,
    position_freq: torch.Tensor,
    k: int,
    n_fake: int,
    iterations: int = 60,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights w (L, m) such that choosing fakes as the largest ``w * |decoy code|``
    outside the real support puts fakes on each position with the real frequency.
    Without them, the positions real codes use most are the ones most often taken by the
    real support, hence least often free for fakes, and position alone tells real from
    fake. A position real in more than half the items cannot get as many fakes (it is
    free too rarely); its target is capped there and the rest spread over the others.
    Returns the weights, the fake frequencies they reach and the fraction of those fakes
    that are positive, each (L, m)."""
    n = min(len(decoy_codes), len(support))
    if n_fake == 0:  # k' = k: no fakes to place
        zeros = torch.zeros_like(position_freq)
        return torch.ones_like(position_freq), zeros, zeros + 0.5
    score, taken, signs = decoy_codes[:n].abs(), support[:n], decoy_codes.sign()
    target = torch.minimum(position_freq, 1 - position_freq).clamp_min(1.0 / n)
    target = target * (n_fake / target.sum(-1, keepdim=True))
    w = torch.ones_like(position_freq)
    for _ in range(iterations):
        idx = (score * w).masked_fill(taken, -1.0).topk(n_fake, dim=-1).indices
        freq = torch.zeros_like(score).scatter(-1, idx, 1.0).mean(0)
        w = w * (target / freq.clamp_min(0.5 / n)).pow(0.5)
        w = w / w.mean(-1, keepdim=True)
    idx = (score * w).masked_fill(taken, -1.0).topk(n_fake, dim=-1).indices
    chosen = torch.zeros_like(score).scatter(-1, idx, 1.0)
    positive = (chosen * (signs[:n] > 0)).sum(0) / chosen.sum(0).clamp_min(1)
    positive = torch.where(chosen.sum(0) > 0, positive, torch.full_like(positive, 0.5))
    return w, chosen.mean(0), positive
