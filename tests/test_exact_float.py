"""Correctly rounded float32 arithmetic (``imambig.mechanism.exact_float``): the exact
value's nearest float32, whatever order or kernel computed the float64 sum."""

from __future__ import annotations

import decimal
from fractions import Fraction

import numpy as np
import pytest
import torch

from imambig.mechanism import exact_float as E


def _nearest32(x: Fraction) -> np.float32:
    """Reference: the float32 nearest to ``x``, ties to even, by exhaustion."""
    f = np.float32(float(x))
    candidates = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    dist = [abs(Fraction(float(c)) - x) for c in candidates]
    best = [c for c, d in zip(candidates, dist, strict=True) if d == min(dist)]
    return best[0] if len(best) == 1 else next(c for c in best if c.view(np.uint32) % 2 == 0)


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = _nearest32(sum((Fraction(float(p)) * Fraction(float(q))
                                        for p, q in zip(a[i], b[:, j], strict=True)),
                                       Fraction(0)))
    return out


def _bits(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("k", [1, 7, 64, 300, 1100])  # 300, 1100: summed in blocks
def test_products_are_the_exact_sums_rounded_once(k: int) -> None:
    rng = np.random.default_rng(k)
    a = rng.standard_normal((12, k)).astype(np.float32)
    b = (rng.standard_normal((k, 9)) * 10.0 ** rng.integers(-3, 3, (k, 9))).astype(np.float32)
    b[:, 0] = 0
    b[:, 1] = -b[:, 2] if k > 1 else b[:, 1]  # exact cancellation
    if k >= 3:  # 1 + 2^-24 is a float32 midpoint; 2^-60 more (in the last block) decides
        a[0] = 1  # it upward
        b[:, 3] = 0
        b[0, 3], b[1, 3], b[k - 1, 3] = 1, 2.0**-24, 2.0**-60
    got = E.matmul(torch.from_numpy(a), torch.from_numpy(b))
    assert np.array_equal(_bits(got), _bits(_reference(a, b)))
    if k >= 3:
        assert got[0, 3] == np.nextafter(np.float32(1), np.float32(2))


def test_inputs_of_few_bits_fall_on_midpoints_and_round_right() -> None:
    """bf16 codes times fp16 weights: exact sums often sit on float32 midpoints."""
    rng = np.random.default_rng(0)
    a = (rng.integers(-128, 128, (24, 48)) * 2.0 ** rng.integers(-4, 4, (24, 48)))
    b = (rng.integers(-2048, 2048, (48, 20)) * 2.0 ** rng.integers(-6, 2, (48, 20)))
    a, b = a.astype(np.float32), b.astype(np.float32)
    got = E.matmul(torch.from_numpy(a), torch.from_numpy(b))
    assert np.array_equal(_bits(got), _bits(_reference(a, b)))


def test_products_do_not_depend_on_the_order_of_the_sum() -> None:
    """What differs between kernels is the order of the sum: permuting the terms
    changes plain float32 products, not these."""
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((64, 256)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((256, 512)).astype(np.float32))
    perm = torch.from_numpy(rng.permutation(256))
    assert not torch.equal(a @ b, a[:, perm] @ b[perm])  # the premise
    assert torch.equal(E.matmul(a, b), E.matmul(a[:, perm], b[perm]))
    # nor on the other rows of the batch, nor on a batch dimension
    assert torch.equal(E.matmul(a[5:6], b), E.matmul(a, b)[5:6])
    w = b.reshape(2, 128, 512)
    x = a.reshape(64, 2, 128)
    assert torch.equal(E.grouped_linear(x, w.transpose(1, 2)),
                       torch.stack([E.matmul(x[:, g], w[g]) for g in range(2)], 1))


def test_zero_is_positive_and_helpers_agree() -> None:
    a = torch.zeros(2, 3)
    assert E.matmul(a, -torch.ones(3, 2)).view(torch.int32).eq(0).all()  # +0.0, not -0.0
    x = torch.tensor([[3.0, 4.0], [1.0, -1.0]])
    assert torch.equal(E.row_sum(x), torch.tensor([[7.0], [0.0]]))
    assert torch.equal(E.row_norm(x), torch.tensor([[5.0], [2.0**0.5]]))


def test_exp_is_correctly_rounded() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(3000) * 4, [0.0, -87.0, 88.0, 1e-8, -1e-30]])
    got = E.exp(torch.from_numpy(x.astype(np.float32)))
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        want = [_nearest32(Fraction(decimal.Decimal(float(np.float32(v))).exp())) for v in x]
    assert np.array_equal(_bits(got), _bits(np.array(want, np.float32)))
