"""Key coding: exact sizes, bijective ranks, strict decoding, lower-fidelity keys."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from imambig.errors import KeyFormatError
from imambig.mechanism import keys as K


def random_masks(rng: np.random.Generator, shape: tuple[int, ...], k_sel: int) -> np.ndarray:
    """Bool masks of ``shape`` with exactly ``k_sel`` True along the last axis."""
    order = np.argsort(rng.random(shape), axis=-1)[..., :k_sel]
    mask = np.zeros(shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def reference_rank(row: np.ndarray) -> int:
    """The documented ranking, written out plainly: leaves of 16 ranked by the
    combinatorial number system, joined pairwise bottom-up with Vandermonde offsets."""
    nodes = []
    for start in range(0, len(row), K.LEAF_WIDTH):
        leaf = row[start : start + K.LEAF_WIDTH]
        members = np.flatnonzero(leaf).tolist()
        rank = sum(math.comb(c, j + 1) for j, c in enumerate(members))
        nodes.append((len(leaf), len(members), rank))
    while len(nodes) > 1:
        joined = []
        for (a, i, r_lo), (b, j, r_hi) in zip(nodes[0::2], nodes[1::2], strict=False):
            offset = sum(
                math.comb(a, s) * math.comb(b, i + j - s) for s in range(i) if i + j - s <= b
            )
            joined.append((a + b, i + j, offset + r_lo * math.comb(b, j) + r_hi))
        if len(nodes) % 2:
            joined.append(nodes[-1])
        nodes = joined
    return nodes[0][2]


# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------


def test_paper_key_size() -> None:
    n_maps, k_public, k = 20, 256, 128
    payload = math.ceil(n_maps * math.log2(math.comb(k_public, k)) / 8)
    assert payload == 630
    assert K.payload_bytes(n_maps, k_public, k) == payload
    mask = random_masks(np.random.default_rng(0), (n_maps, k_public), k)
    key = K.encode_key(mask, seal=bytes(range(16)))
    print(f"paper key: {len(key)} bytes ({payload} payload + {K.HEADER_BYTES} header + "
          "16 seal)")
    assert len(key) == K.key_bytes(n_maps, k_public, k) == payload + K.HEADER_BYTES + 16
    assert len(key) <= 660
    unsealed = K.encode_key(mask)
    assert len(unsealed) == K.key_bytes(n_maps, k_public, k, sealed=False) == payload + 7


@pytest.mark.parametrize(
    ("n_maps", "k_public", "k_sel"),
    [(20, 192, 128), (20, 256, 128), (20, 320, 128), (20, 384, 128), (20, 256, 64), (3, 17, 5)],
)
def test_payload_is_the_information_bound(n_maps: int, k_public: int, k_sel: int) -> None:
    bound = K.key_bound_bits(n_maps, k_public, k_sel)
    assert bound == pytest.approx(n_maps * math.log2(math.comb(k_public, k_sel)))
    assert K.payload_bytes(n_maps, k_public, k_sel) == math.ceil(bound / 8)


def test_whole_subsets_cost_nothing() -> None:
    # k_sel = k' leaves a single possibility per map: the payload is empty.
    assert K.payload_bytes(4, 10, 10) == 0
    mask = np.ones((4, 10), bool)
    key = K.encode_key(mask)
    assert len(key) == K.HEADER_BYTES
    np.testing.assert_array_equal(K.decode_key(key), mask)


def test_sealed_keys_carry_their_seal() -> None:
    rng = np.random.default_rng(3)
    masks = random_masks(rng, (3, 5, 24), 12)
    seals = rng.integers(0, 256, (3, 16), dtype=np.uint8)
    keys = K.encode_keys(masks, seals)
    assert all(key[0] == K.KEY_VERSION and len(key) == K.key_bytes(5, 24, 12) for key in keys)
    np.testing.assert_array_equal(K.decode_keys(keys), masks)
    np.testing.assert_array_equal(K.key_seals(keys), seals)
    assert K.key_seals(K.encode_keys(masks)) is None
    with pytest.raises(KeyFormatError, match="all be sealed"):
        K.decode_keys([keys[0], *K.encode_keys(masks[1:])])
    with pytest.raises(KeyFormatError, match="bytes"):
        K.decode_key(keys[0][:-1])


# ---------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("k_public", "k_sel"), [(6, 3), (12, 5), (20, 10), (33, 3), (40, 2)])
def test_ranks_are_a_bijection(k_public: int, k_sel: int) -> None:
    subsets = list(itertools.combinations(range(k_public), k_sel))
    masks = np.zeros((len(subsets), k_public), bool)
    for row, subset in enumerate(subsets):
        masks[row, list(subset)] = True
    ranks = K.rank_subsets(masks)
    assert sorted(ranks) == list(range(math.comb(k_public, k_sel)))


def test_small_case_is_the_combinatorial_number_system() -> None:
    # Within one leaf the rank is sum_j C(c_j, j+1): all 20 3-subsets of 6 -> 0..19.
    subsets = list(itertools.combinations(range(6), 3))
    masks = np.zeros((20, 6), bool)
    for row, subset in enumerate(subsets):
        masks[row, list(subset)] = True
    expected = [sum(math.comb(c, j + 1) for j, c in enumerate(s)) for s in subsets]
    assert K.rank_subsets(masks) == expected
    assert sorted(expected) == list(range(20))


@pytest.mark.parametrize(("k_public", "k_sel"), [(256, 128), (192, 128), (50, 7), (1024, 512)])
def test_ranks_match_the_reference(k_public: int, k_sel: int) -> None:
    masks = random_masks(np.random.default_rng(k_public), (12, k_public), k_sel)
    assert K.rank_subsets(masks) == [reference_rank(row) for row in masks]


def test_unrank_at_every_count_boundary() -> None:
    # Ranks right at and just below each offset of the root split are where a
    # floating-point guess of the split can be wrong; decoding must still be exact.
    k_public, k_sel = 256, 128
    total = math.comb(k_public, k_sel)
    boundaries, acc = set(), 0
    for i in range(k_sel + 1):
        acc += math.comb(128, i) * math.comb(128, k_sel - i)
        boundaries |= {acc - 1, acc, acc + 1}
    ranks = sorted(r for r in boundaries | {0, total - 1} if 0 <= r < total)
    masks = K._unrank_maps(np.array(ranks, dtype=object), k_public, k_sel)
    assert (masks.sum(axis=1) == k_sel).all()
    assert K.rank_subsets(masks) == ranks


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_maps", "k_public", "k_sel"),
    [
        (20, 256, 128),
        (20, 192, 128),
        (20, 384, 128),
        (20, 256, 32),
        (1, 256, 128),
        (5, 256, 1),
        (5, 256, 255),
        (5, 40, 40),
        (1, 1, 1),
        (3, 9, 4),
        (2, 1000, 3),
    ],
)
def test_round_trip(n_maps: int, k_public: int, k_sel: int) -> None:
    rng = np.random.default_rng(n_maps * 1000 + k_public + k_sel)
    masks = random_masks(rng, (4, n_maps, k_public), k_sel)
    keys = K.encode_keys(masks)
    assert all(len(key) == K.key_bytes(n_maps, k_public, k_sel, sealed=False) for key in keys)
    np.testing.assert_array_equal(K.decode_keys(keys), masks)
    for mask, key in zip(masks, keys, strict=True):
        assert K.encode_key(mask) == key
        np.testing.assert_array_equal(K.decode_key(key, n_maps), mask)


def test_extreme_subsets_round_trip() -> None:
    # First and last subsets in every map: ranks 0 and C(k', k) - 1 in the mix.
    mask = np.zeros((4, 256), bool)
    mask[0, :128] = True
    mask[1, 128:] = True
    mask[2, ::2] = True
    mask[3, 1::2] = True
    key = K.encode_key(mask)
    np.testing.assert_array_equal(K.decode_key(key), mask)
    assert sorted(K.rank_subsets(mask[:2])) == [0, math.comb(256, 128) - 1]


def test_distinct_masks_give_distinct_keys() -> None:
    rng = np.random.default_rng(3)
    mask = random_masks(rng, (20, 256), 128)
    other = mask.copy()
    row = other[7]
    on, off = np.flatnonzero(row)[0], np.flatnonzero(~row)[0]
    row[on], row[off] = False, True
    assert K.encode_key(mask) != K.encode_key(other)


def test_empty_batches() -> None:
    assert K.encode_keys(np.zeros((0, 20, 256), bool)) == []
    assert K.decode_keys([], 20, k_public=256).shape == (0, 20, 256)
    with pytest.raises(ValueError, match="empty batch"):
        K.decode_keys([])


# ---------------------------------------------------------------------------
# Strict validation
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_key() -> bytes:
    return K.encode_key(random_masks(np.random.default_rng(5), (20, 256), 128))


def test_wrong_length_is_refused(paper_key: bytes) -> None:
    with pytest.raises(ValueError, match="expected 637"):
        K.decode_key(paper_key[:-1])
    with pytest.raises(ValueError, match="expected 637"):
        K.decode_key(paper_key + b"\0")
    with pytest.raises(ValueError, match="header"):
        K.decode_key(paper_key[:3])


def test_bad_header_is_refused(paper_key: bytes) -> None:
    with pytest.raises(ValueError, match="version 9"):
        K.decode_key(b"\x09" + paper_key[1:])
    zero_k = bytearray(paper_key)
    zero_k[3:5] = (0).to_bytes(2, "big")  # k_sel = 0
    with pytest.raises(ValueError, match="bad key header"):
        K.decode_key(bytes(zero_k))
    too_many = bytearray(paper_key)
    too_many[3:5] = (300).to_bytes(2, "big")  # k_sel > k'
    with pytest.raises(ValueError, match="bad key header"):
        K.decode_key(bytes(too_many))
    other_maps = bytearray(paper_key)
    other_maps[5:7] = (19).to_bytes(2, "big")  # length no longer matches
    with pytest.raises(ValueError, match="expected"):
        K.decode_key(bytes(other_maps))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("n_maps", "k_public", "k_sel", "payload"), [
    (65535, 1024, 512, 100), (4096, 1024, 512, 100), (4000, 1024, 512, 521_000),
    (20, 1024, 512, 2545), (1, 1, 1, 0),
])
def test_headers_claiming_huge_sizes_fail_in_bounded_time(n_maps, k_public, k_sel,
                                                          payload) -> None:
    # Today's check computed C(k', k_sel)^L before comparing lengths: minutes for these.
    import struct
    import time

    from imambig.errors import KeyFormatError

    key = struct.pack(">BHHH", K.KEY_VERSION, k_public, k_sel, n_maps) + bytes(payload + 1)
    t0 = time.perf_counter()
    with pytest.raises(KeyFormatError):
        K.decode_key(key, 20, k_public=256)
    assert time.perf_counter() - t0 < 0.5


def test_rank_out_of_range_is_refused(paper_key: bytes) -> None:
    # 630 bytes hold more than C(256,128)^20 values; the excess must not decode.
    top = b"\xff" * K.payload_bytes(20, 256, 128)
    with pytest.raises(ValueError, match="rank out of range"):
        K.decode_key(paper_key[: K.HEADER_BYTES] + top)


def test_expected_shape_is_checked(paper_key: bytes) -> None:
    with pytest.raises(ValueError, match="L=20, expected L=8"):
        K.decode_key(paper_key, 8)
    with pytest.raises(ValueError, match="k_sel=128, expected k_sel=64"):
        K.decode_key(paper_key, k_sel=64)
    assert K.decode_key(paper_key, 20, k_public=256, k_sel=128).shape == (20, 256)


def test_mixed_batch_is_refused(paper_key: bytes) -> None:
    low = K.encode_key(random_masks(np.random.default_rng(6), (20, 256), 64))
    with pytest.raises(ValueError, match="share"):
        K.decode_keys([paper_key, low])


def test_bad_masks_are_refused() -> None:
    mask = random_masks(np.random.default_rng(7), (4, 32), 8)
    uneven = mask.copy()
    uneven[2, np.flatnonzero(~uneven[2])[0]] = True
    with pytest.raises(ValueError, match="same number"):
        K.encode_key(uneven)
    with pytest.raises(TypeError, match="bool"):
        K.encode_key(mask.astype(np.uint8))
    with pytest.raises(ValueError, match="k_sel=0"):
        K.encode_key(np.zeros((4, 32), bool))
    with pytest.raises(ValueError, match="shape"):
        K.encode_key(mask[0])


# ---------------------------------------------------------------------------
# Lower fidelity
# ---------------------------------------------------------------------------


def test_lower_fidelity_keeps_largest_magnitudes() -> None:
    rng = np.random.default_rng(8)
    real = random_masks(rng, (20, 256), 128)
    values = rng.normal(size=(20, 256)).astype(np.float16)
    low = K.lower_fidelity(real, values, 32)
    assert low.dtype == bool and (low.sum(axis=1) == 32).all()
    assert not (low & ~real).any()  # only real entries survive
    for row in range(20):
        kept = np.abs(values[row][low[row]].astype(np.float64))
        dropped = np.abs(values[row][real[row] & ~low[row]].astype(np.float64))
        assert kept.min() >= dropped.max()
    np.testing.assert_array_equal(K.decode_key(K.encode_key(low)), low)


def test_lower_fidelity_ignores_fakes_and_breaks_ties_by_position() -> None:
    real = np.array([[True, True, True, False, True]])
    values = np.array([[1.0, -2.0, 2.0, 100.0, 0.5]])  # the fake (100) must not count
    np.testing.assert_array_equal(
        K.lower_fidelity(real, values, 2), [[False, True, True, False, False]]
    )
    tied = np.array([[3.0, -3.0, 3.0, 9.0, 3.0]])
    np.testing.assert_array_equal(
        K.lower_fidelity(real, tied, 2), [[True, True, False, False, False]]
    )
    # Batched input gives the same per-item answer.
    batch = K.lower_fidelity(np.stack([real, real]), np.stack([values, tied]), 2)
    np.testing.assert_array_equal(batch[1], [[True, True, False, False, False]])


def test_lower_fidelity_validation() -> None:
    real = np.array([[True, True, False]])
    with pytest.raises(ValueError, match="k_low=3"):
        K.lower_fidelity(real, np.ones((1, 3)), 3)
    with pytest.raises(ValueError, match="finite"):
        K.lower_fidelity(real, np.array([[np.nan, 1.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="shape"):
        K.lower_fidelity(real, np.ones((1, 4)), 1)
