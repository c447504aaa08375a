"""Sealing: the published record is independent of the image (uniform positions and
values, real entries like fakes), the same image publishes the same record, and a
near-duplicate publishes one that shares nothing with the first beyond chance."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chisquare

from imambig.access.secrets import Secret
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.record import Ambiguated
from imambig.mechanism.seal import alphabet, from_symbols, to_symbols
from imambig.stages.encode.images import bottlenecks
from imambig.study.near_duplicates import transform

SECRET = Secret(b"s" * 32)


@pytest.fixture(scope="module")
def setup(tiny_mechanism):
    model, noise, images = tiny_mechanism
    return model, noise, DecoyMap.for_owner(noise, SECRET), images[:40]


def _records(setup, images: np.ndarray, sealed: bool = True) -> Ambiguated:
    model, noise, decoys, _ = setup
    return ambiguate(model, bottlenecks(model, images), noise, decoys, sealed=sealed)


def test_seal_round_trips_and_keeps_the_authorized_code(setup) -> None:
    images = setup[3]
    opened, sealed = _records(setup, images, False), _records(setup, images)
    back = sealed.opened()
    assert np.array_equal(back.mask, opened.mask) and np.array_equal(back.real, opened.real)
    assert back.values.tobytes() == opened.values.tobytes()
    assert torch.equal(sealed.authorized_code(), opened.authorized_code())
    assert (sealed.mask.sum(-1) == opened.mask.sum(-1)).all()
    assert (sealed.real.sum(-1) == opened.real.sum(-1)).all()
    # a record moves: positions and values are not the ambiguated ones
    assert (sealed.mask != opened.mask).any(axis=(1, 2)).all()
    with pytest.raises(ValueError, match="sealed already"):
        sealed.sealed(b"k" * 32)


def test_symbols_cover_every_finite_public_value() -> None:
    symbols = np.arange(alphabet())
    values = from_symbols(symbols)
    assert np.isfinite(values.astype(np.float32)).all()
    assert np.array_equal(to_symbols(values), symbols)
    with pytest.raises(ValueError, match="mantissa"):
        to_symbols(np.array([1.0 + 2**-10], np.float16))


def test_sealed_records_are_uniform_whatever_the_image(setup) -> None:
    """Positions uniform over each map, value symbols uniform over the alphabet, for
    real and fake entries alike: chi-square tests that fail on the unsealed records."""
    images = setup[3]
    for sealed, should_pass in ((_records(setup, images), True),
                                (_records(setup, images, False), False)):
        freq = sealed.mask.sum(0).ravel()  # (L * m) counts over 40 records
        p_pos = chisquare(freq).pvalue
        sym = to_symbols(sealed.values)
        p_real = chisquare(np.bincount(sym[sealed.real], minlength=alphabet())).pvalue
        p_fake = chisquare(np.bincount(sym[~sealed.real], minlength=alphabet())).pvalue
        if should_pass:
            assert min(p_pos, p_real, p_fake) > 1e-4, (p_pos, p_real, p_fake)
        else:
            assert min(p_real, p_fake) < 1e-12, (p_pos, p_real, p_fake)


def _jpeg90(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return np.asarray(Image.open(io.BytesIO(transform(buf.getvalue(), "jpeg90"))).convert("RGB"))


def test_a_near_duplicate_shares_nothing_but_chance(setup) -> None:
    """Two sealed records of a photo and its JPEG re-save: common positions at the rate
    of two random k'-subsets, and equal values there at 1/alphabet. Unsealed, they share
    most real entries (what a second-release attacker used)."""
    images = setup[3]
    copy = np.stack([_jpeg90(im) for im in images])
    a, b = _records(setup, images), _records(setup, copy)
    m, kp = a.mask.shape[-1], a.values.shape[-1]
    both = a.mask & b.mask
    assert abs(both.sum() / a.mask.sum() - kp / m) < 0.05
    dense_a, dense_b = a.public_code().numpy(), b.public_code().numpy()
    same = (dense_a == dense_b) & both
    assert same.sum() / both.sum() < 5 / alphabet()
    oa, ob = _records(setup, images, False), _records(setup, copy, False)
    real_a = np.zeros_like(oa.mask)
    real_a[oa.mask] = oa.real.ravel()
    kept = ((oa.public_code().numpy() == ob.public_code().numpy()) & real_a).sum()
    assert kept / real_a.sum() > 0.5


def test_the_same_image_publishes_the_same_sealed_record(setup) -> None:
    images = setup[3][:6]
    a, b = _records(setup, images), _records(setup, images[::-1].copy())
    assert a.values.tobytes() == b.values[::-1].tobytes()
    assert np.array_equal(a.mask, b.mask[::-1]) and np.array_equal(a.seals, b.seals[::-1])


def test_another_owner_seals_differently(setup) -> None:
    model, noise, _, images = setup
    h = bottlenecks(model, images[:4])
    a = ambiguate(model, h, noise, DecoyMap.for_owner(noise, SECRET))
    b = ambiguate(model, h, noise, DecoyMap.for_owner(noise, Secret(b"t" * 32)))
    assert not (a.seals == b.seals).all(axis=1).any()
    assert abs((a.mask & b.mask).sum() / a.mask.sum() - a.values.shape[-1] / a.mask.shape[-1]
               ) < 0.08
