"""float32 arithmetic that gives the same bits on every machine: correctly rounded
products, sums and exponentials.

A float32 matrix product or reduction is rounded differently by every kernel that
computes it (blocking, vector width, FMA, thread count: MKL takes other SGEMM kernels on
Intel CPUs than on AMD ones), and through the seal a one-ulp change that moves a
top-k near-tie, a fake's position or a value next to a quantizer step publishes an
unrelated record. The mechanism therefore computes its products, sums and
exponentials here, each rounded correctly from its exact value: float32 inputs give
exact float64 products, the float64 sum (any order, any kernel) is within a proven
bound of the exact sum, and where that interval holds no float32 rounding boundary,
every point in it rounds to the same float32, the exact value's. The rest is computed
exactly: rare for full-precision inputs, about 2 % of the grouped layer's outputs for
bf16 codes (few bits: their exact sums often fall on float32 midpoints). Element-wise
float32 operations (add, multiply, divide, sqrt, comparisons) are correctly rounded by
IEEE 754 already.
"""

from __future__ import annotations

import decimal
import math
import weakref
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch

_EPS64 = 2.0**-52
# Up to this many terms, (K + 2) 2^-52 sum|terms| is above the float64 error bound
# gamma_K sum|terms| = K 2^-53 / (1 - K 2^-53) sum|terms|, with room for the rounding of
# r +- bound itself (at most 2^-53 (|r| + bound) each).
MAX_TERMS = 1 << 20
BLOCK = 256  # long sums are summed in blocks of this many terms (_blocked)
_EXP_DIGITS = 40  # float32 exp needs ~60 bits to round correctly in the worst case


def _round32(values: np.ndarray, side: Callable[[int, float], float]) -> np.ndarray:
    """float32 nearest to exact values whose float64 roundings are ``values``;
    ``side(i, mid)`` has the sign of exact value ``i`` minus ``mid``. Rounding twice errs
    only where a float64 rounding is a float32 midpoint; there the exact side decides."""
    nearest = values.astype(np.float32)  # ties to even
    out = nearest.copy()
    for step in (-np.inf, np.inf):
        other = np.nextafter(nearest, np.float32(step))
        mid = (nearest.astype(np.float64) + other.astype(np.float64)) / 2  # exact
        for i in np.flatnonzero(np.isfinite(values) & (values == mid)):
            s = side(int(i), float(mid[i]))
            # past the midpoint towards ``other``: that one (on it: ties to even, kept)
            if s != 0 and (s > 0) == (step > 0):
                out[i] = other[i]
    return out


def _settle(r: torch.Tensor, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 of float64 ``r`` known within ``err`` of an exact value, and where that is
    not decided (a float32 rounding boundary within reach)."""
    lo, hi = (r - err).float(), (r + err).float()
    return torch.where(lo == hi, lo, hi), lo != hi


class Operand:
    """A right-hand matrix (..., K, N) used many times: its float64 value and column
    norms, computed once per device."""

    def __init__(self, b: torch.Tensor) -> None:
        self.value = b.detach().float().double()
        self.norms = _norms(self.value, -2)
        self._moved: dict[torch.device, Operand] = {self.value.device: self}

    def to(self, device: torch.device) -> Operand:
        """This operand on ``device`` (copied once, then kept)."""
        hit = self._moved.get(device)
        if hit is None:
            hit = object.__new__(Operand)
            hit.value, hit.norms = self.value.to(device), self.norms.to(device)
            hit._moved = self._moved
            self._moved[device] = hit
        return hit


def _norms(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Euclidean norms along ``dim`` of float64 copies of float32 numbers, raised past
    their rounding (squares exact, sum and root within (K + 2) 2^-53 < 2^-30)."""
    return x.square().sum(dim).sqrt() * (1 + 2.0**-30)


def _exact_sums(terms: np.ndarray) -> tuple[np.ndarray, Callable[[int, float], float]]:
    """Row sums of float64 ``terms`` (N, K), each the exact sum rounded once, and the
    sign of an exact sum minus a number (for :func:`_round32`).

    Where every term of a row is a multiple of 2^q and sum|terms| < 2^(53+q), every
    partial sum is representable, so the plain float64 sum is exact: the common case
    for inputs of few bits (bf16 codes, fp16 weights), whose exact sums fall on float32
    midpoints. Other rows are summed by ``math.fsum``."""
    mantissa, exponent = np.frexp(terms)
    ints = (mantissa * 2.0**53).astype(np.int64)  # exact: |mantissa| < 1
    lowest = np.log2((ints & -ints).astype(np.float64).clip(min=1))  # of the lowest 1 bit
    grain = np.where(ints != 0, exponent - 53 + lowest, np.inf).min(axis=1)
    magnitude = np.abs(terms).sum(axis=1) * (1 + 2.0**-30)  # over any rounding of the sum
    plain = ~np.isfinite(grain) | (magnitude < np.exp2(np.minimum(grain, 1000) + 53))
    sums = terms.sum(axis=1)
    rows: dict[int, list[float]] = {}
    for n in np.flatnonzero(~plain):
        rows[int(n)] = terms[n].tolist()
        sums[n] = math.fsum(rows[int(n)])

    def side(n: int, mid: float) -> float:
        # exact where plain: the sign of a float64 difference is the exact one's
        return math.fsum([*rows[n], -mid]) if n in rows else sums[n] - mid

    return sums, side


def _resolve(r: torch.Tensor, total: torch.Tensor, k: int,
             terms: Callable[[torch.Tensor], np.ndarray], bound: int | None = None
             ) -> torch.Tensor:
    """float32 roundings of exact sums of ``k`` products, given their float64 sums ``r``
    and bounds ``total`` on sum|products| (any shape, any device). ``terms(open)``
    gives the exact float64 products (n, k) of the entries ``open`` (bool, like ``r``)
    where the float64 sum does not decide: they are summed exactly on the CPU.
    ``bound``: the terms ``r``'s error bound counts (:func:`_blocked`), ``k`` if None."""
    if k > MAX_TERMS:
        raise ValueError(f"sums of more than {MAX_TERMS} terms are not bounded here")
    out, open_ = _settle(r, total * (((k if bound is None else bound) + 2) * _EPS64))
    if open_.any():
        products = terms(open_)
        # first the bound sum|terms| itself, tighter than Cauchy-Schwarz's
        sums = products.sum(axis=1)
        reach = np.abs(products).sum(axis=1) * ((k + 2) * _EPS64)
        lo, hi = (sums - reach).astype(np.float32), (sums + reach).astype(np.float32)
        found = np.where(lo == hi, lo, np.float32(0))
        if (lo != hi).any():
            found[lo != hi] = _round32(*_exact_sums(products[lo != hi]))
        out[open_] = torch.from_numpy(found).to(out.device)
    return out + 0.0  # -0.0 -> +0.0: the sign of an exact zero depends on the order


def matmul(a: torch.Tensor, b: torch.Tensor | Operand) -> torch.Tensor:
    """``a @ b`` for float32 ``a`` (..., M, K) and ``b`` (..., K, N), each output the
    float32 nearest to the exact sum of products; on ``a``'s device."""
    b = (b if isinstance(b, Operand) else Operand(b)).to(a.device)
    a64 = a.detach().float().double()
    r, bound = _blocked(a64, b.value)
    # sum|terms| <= |row| |column| (Cauchy-Schwarz): no second product needed
    total = _norms(a64, -1).unsqueeze(-1) * b.norms.unsqueeze(-2)

    def terms(open_: torch.Tensor) -> np.ndarray:
        batch = torch.broadcast_shapes(a64.shape[:-2], b.value.shape[:-2])
        *lead, i, j = open_.nonzero(as_tuple=True)
        rows = a64.expand(*batch, *a64.shape[-2:])[(*lead, i)]
        cols = b.value.expand(*batch, *b.value.shape[-2:]).transpose(-1, -2)[(*lead, j)]
        return (rows.cpu() * cols.cpu()).numpy()

    return _resolve(r, total, a.shape[-1], terms, bound)


def _blocked(a64: torch.Tensor, b64: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``a64 @ b64`` summed in blocks of ``BLOCK`` terms, and the number of terms its
    error bound counts: gamma_BLOCK on each block's sum, gamma_blocks on the sum of the
    blocks, instead of gamma_K on one sum. For long sums (the principal coordinates
    sum 5,120 products) that bound is ~18x tighter, so far fewer outputs need the exact
    sum (``benchmarks/bench_exact_products.py`` counts them); the outputs are the same
    (each is the exact value's rounding)."""
    k = a64.shape[-1]
    if k <= BLOCK:
        return a64 @ b64, k
    r = a64[..., :BLOCK] @ b64[..., :BLOCK, :]
    for s in range(BLOCK, k, BLOCK):
        r += a64[..., s : s + BLOCK] @ b64[..., s : s + BLOCK, :]
    # |error| <= gamma_B S + gamma_nb (1 + gamma_B) S: under (B + nb + 2) 2^-52 S
    return r, BLOCK + math.ceil(k / BLOCK) + 2


def matmul_at(a: torch.Tensor, b: Operand, columns: torch.Tensor) -> torch.Tensor:
    """``(a @ b).gather(1, columns)`` for 2-D ``a`` (M, K) and ``b`` (K, N), correctly
    rounded like :func:`matmul`, settling only the entries asked for (``columns``
    (M, C) int64): the products are one float64 matrix product all the same, but the
    bounds and roundings are done for C of the N columns."""
    b = b.to(a.device)
    a64 = a.detach().float().double()
    r = (a64 @ b.value).gather(1, columns)
    total = _norms(a64, -1).unsqueeze(-1) * b.norms[columns]

    def terms(open_: torch.Tensor) -> np.ndarray:
        i, c = open_.nonzero(as_tuple=True)
        return (a64[i].cpu() * b.value[:, columns[i, c]].T.cpu()).numpy()

    return _resolve(r, total, a.shape[-1], terms)


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """Sums over the last axis, keeping it (size 1), correctly rounded."""
    ones = torch.ones(x.shape[-1], 1, dtype=torch.float32, device=x.device)
    return matmul(x.float().unsqueeze(-2), ones).squeeze(-2)


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norms over the last axis, keeping it: the square root (IEEE) of the
    correctly rounded sum of squares."""
    x = x.float()
    return torch.sqrt(matmul(x.unsqueeze(-2), x.unsqueeze(-1)).squeeze(-1))


def exp(x: torch.Tensor) -> torch.Tensor:
    """e^x for float32 ``x``, correctly rounded (SLEEF's vector code and libm's scalar
    code, which torch mixes by position, differ in the last bit)."""
    x = x.float()
    r = torch.exp(x.double())
    # float64 exp is within a few ulp everywhere; 2^-50 relative is a safe margin
    out, open_ = _settle(r, r.abs() * 2.0**-50)
    if open_.any():
        with decimal.localcontext() as ctx:
            ctx.prec = _EXP_DIGITS
            # exp of a non-zero rational is irrational: never on a midpoint, and 40
            # digits place it on the right side of one
            exact = [Fraction(decimal.Decimal(v).exp()) for v in x.double()[open_].tolist()]
        out[open_] = torch.from_numpy(_round32(
            np.array([float(e) for e in exact]),
            lambda n, mid: float(exact[n] - Fraction(mid)))).to(out.device)
    return out


_WEIGHTS: dict[int, tuple[weakref.ref, int, Operand]] = {}  # id -> (tensor, version, operand)


def _weights(weight: torch.Tensor) -> Operand:
    """The transposed grouped weights (L, n, m) as an Operand, converted once per weight
    tensor and version (the mechanism applies them twice per batch)."""
    hit = _WEIGHTS.get(id(weight))
    if hit is not None and hit[0]() is weight and hit[1] == weight._version:
        return hit[2]
    operand = Operand(weight.detach().cpu().transpose(1, 2))
    if len(_WEIGHTS) >= 4:
        _WEIGHTS.pop(next(iter(_WEIGHTS)))
    _WEIGHTS[id(weight)] = (weakref.ref(weight), weight._version, operand)
    return operand


def grouped_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``GroupedLinear``'s forward, correctly rounded: ``x`` (B, L, n), ``weight``
    (L, m, n) -> (B, L, m)."""
    return matmul(x.float().transpose(0, 1), _weights(weight).to(x.device)).transpose(0, 1)
