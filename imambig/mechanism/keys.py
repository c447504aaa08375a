"""Per-image keys: which of the public non-zeros of each code-map are real.

An ambiguated code-map publishes ``k'`` non-zeros; the key says which ``k_sel`` of them
are real (``k_sel = k`` for a full key, fewer for a lower-fidelity key). Per map that is
a ``k_sel``-subset of ``{0..k'-1}``, so a key carries ``L * log2 C(k', k_sel)`` bits of
information, and that is what it costs: every subset gets a rank in ``[0, C(k', k_sel))``,
the ``L`` ranks are combined mixed-radix into one integer below ``C(k', k_sel)^L`` and
written big-endian in exactly ``ceil(L * log2 C(k', k_sel) / 8)`` bytes. The paper
configuration (L=20, k'=256, k=128) gives 630 payload bytes.

Key layout (all integers big-endian)::

    version (u8) | k' (u16) | k_sel (u16) | L (u16) | seal (16 bytes, version 2) | payload

The header makes a key self-describing, so a key for another configuration (or a
corrupted one) is refused instead of silently decoding into a wrong mask. Keys of sealed
records (version 2, what encoding makes) carry the record's seal
(``imambig.mechanism.seal``) and mark entries of the sealed record; version 1 keys, of
unsealed records, carry none and are refused wherever records are sealed
(:func:`check_sealed`, :func:`stored_records`).

Subset ranking. Within a *leaf* of 16 consecutive positions a subset is ranked with the
combinatorial number system (``rank = sum_j C(c_j, j+1)`` over its sorted members).
Leaves are joined pairwise, bottom-up, into a binary tree (an odd node out is carried up
unchanged). A node of width ``a + b`` whose halves hold ``i`` and ``j`` members ranks as::

    rank = sum_{t < i} C(a, t) C(b, i+j-t)  +  rank_lo * C(b, j)  +  rank_hi

By Vandermonde's identity this is a bijection onto ``[0, C(a+b, i+j))``, so the code
is exactly as short as the plain combinatorial number system over all ``k'`` positions.
It is used instead because the plain system unranks one member at a time (hundreds of
sequential big-integer steps per map), whereas the tree works level by level on whole
arrays: uint64 while nodes are at most 64 wide, Python integers above that.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imambig.errors import KeyFormatError
from imambig.mechanism.record import Ambiguated
from imambig.mechanism.seal import SEAL_BYTES

KEY_VERSION = 2  # sealed records
UNSEALED_VERSION = 1
_HEADER = struct.Struct(">BHHH")
HEADER_BYTES = _HEADER.size
LEAF_WIDTH = 16  # leaves are ranked by table lookup (2**16 entries)
# Widest node whose ranks always fit uint64: C(64, 32) < 2**63.
_U64_MAX_WIDTH = 64
# Node tables grow with the square of the width, and ranks must stay below float64's
# range (C(1024, 512) < 2**1024) for the count guess; public non-zeros live inside one
# code-map (the paper's maps are 512 long), so this bound is generous.
MAX_PUBLIC = 1024
MAX_MAPS = 4096  # the paper has 20 maps; a header claiming more is refused unread
MAX_PAYLOAD_BYTES = 64 << 10  # paper keys are 630 bytes; bounds big-integer work per key


# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------


def _check_shape(n_maps: int, k_public: int, k_sel: int) -> None:
    if not 1 <= k_public <= MAX_PUBLIC:
        raise KeyFormatError(f"k'={k_public} must be in 1..{MAX_PUBLIC}")
    if not 1 <= k_sel <= k_public:
        raise KeyFormatError(f"k_sel={k_sel} must be in 1..k'={k_public}")
    if not 1 <= n_maps <= MAX_MAPS:
        raise KeyFormatError(f"L={n_maps} must be in 1..{MAX_MAPS}")


def _approx_payload_bytes(n_maps: int, k_public: int, k_sel: int) -> float:
    """``L * log2 C(k', k_sel) / 8`` in floating point: cheap for any header, so a key's
    length is checked against it before the exact (big-integer) size is computed."""
    return n_maps * math.log2(math.comb(k_public, k_sel)) / 8


@functools.lru_cache(maxsize=64)
def _space(n_maps: int, k_public: int, k_sel: int) -> int:
    """Number of distinct keys: C(k', k_sel)^L."""
    return math.comb(k_public, k_sel) ** n_maps


def payload_bytes(n_maps: int, k_public: int, k_sel: int) -> int:
    """``ceil(L * log2 C(k', k_sel) / 8)``, computed exactly on integers."""
    _check_shape(n_maps, k_public, k_sel)
    return ((_space(n_maps, k_public, k_sel) - 1).bit_length() + 7) // 8


def key_bytes(n_maps: int, k_public: int, k_sel: int, sealed: bool = True) -> int:
    """Length of a whole key (header + seal + payload)."""
    return _prefix(sealed) + payload_bytes(n_maps, k_public, k_sel)


def _prefix(sealed: bool) -> int:
    return HEADER_BYTES + (SEAL_BYTES if sealed else 0)


def key_bound_bits(n_maps: int, k_public: int, k_sel: int) -> float:
    """Information content of a key: ``L * log2 C(k', k_sel)`` bits."""
    _check_shape(n_maps, k_public, k_sel)
    return n_maps * math.log2(math.comb(k_public, k_sel))


# ---------------------------------------------------------------------------
# Ranking tables
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _leaf_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every leaf pattern (bit t = position t): member count and colex rank; and the
    inverse, pattern by (count, rank)."""
    patterns = np.arange(1 << LEAF_WIDTH, dtype=np.uint32)
    bits = (patterns[:, None] >> np.arange(LEAF_WIDTH, dtype=np.uint32)) & 1
    below = np.cumsum(bits, axis=1) - bits  # members before position t
    choose = np.array(
        [[math.comb(t, j) for j in range(LEAF_WIDTH + 2)] for t in range(LEAF_WIDTH)], np.int64
    )
    count = bits.sum(axis=1).astype(np.intp)
    rank = (bits * choose[np.arange(LEAF_WIDTH), below + 1]).sum(axis=1).astype(np.uint64)
    pattern = np.zeros((LEAF_WIDTH + 1, math.comb(LEAF_WIDTH, LEAF_WIDTH // 2)), np.uint16)
    pattern[count, rank.astype(np.intp)] = patterns
    return count, rank, pattern


@dataclass(frozen=True)
class _Level:
    """One pairing step of the tree: nodes ``2p`` and ``2p+1`` join into node ``p``."""

    n_pairs: int
    carry: bool  # an odd last node moves up unchanged
    table_of_pair: np.ndarray  # (n_pairs,) index into the tables below
    # offset[t, k, i] = sum_{s<i} C(a, s) C(b, k-s) for the (a, b) widths of table t;
    # columns past ``a`` hold the full sum C(a+b, k), so a count search never picks them.
    offset: np.ndarray
    offset_approx: np.ndarray  # float64 copy, to guess a count before checking it exactly
    choose_hi: np.ndarray  # [t, j] = C(b, j)
    dtype: type | np.dtype  # np.uint64, or object (Python ints) for wide nodes


@dataclass(frozen=True)
class _Plan:
    k_public: int
    n_leaves: int
    levels: tuple[_Level, ...]


def _level(widths: list[int], k_sel: int) -> tuple[_Level, list[int]]:
    n_pairs = len(widths) // 2
    pairs = [(widths[2 * p], widths[2 * p + 1]) for p in range(n_pairs)]
    kinds = sorted(set(pairs))
    wide = max(a + b for a, b in kinds) > _U64_MAX_WIDTH
    dtype: type | np.dtype = object if wide else np.dtype(np.uint64)
    max_k = min(max(a + b for a, b in kinds), k_sel)
    max_i = min(max(a for a, _ in kinds), k_sel)
    max_j = min(max(b for _, b in kinds), k_sel)
    offset = np.zeros((len(kinds), max_k + 1, max_i + 1), dtype=object)
    choose_hi = np.zeros((len(kinds), max_j + 1), dtype=object)
    for t, (a, b) in enumerate(kinds):
        for k in range(min(a + b, max_k) + 1):
            total = 0
            for i in range(max_i + 1):
                offset[t, k, i] = total
                if i <= min(a, k) and k - i <= b:
                    total += math.comb(a, i) * math.comb(b, k - i)
        for j in range(min(b, max_j) + 1):
            choose_hi[t, j] = math.comb(b, j)
    if not wide:
        offset, choose_hi = offset.astype(np.uint64), choose_hi.astype(np.uint64)
    level = _Level(
        n_pairs=n_pairs,
        carry=len(widths) % 2 == 1,
        table_of_pair=np.array([kinds.index(p) for p in pairs], np.intp),
        offset=offset,
        offset_approx=offset.astype(np.float64),
        choose_hi=choose_hi,
        dtype=dtype,
    )
    up = [a + b for a, b in pairs] + ([widths[-1]] if level.carry else [])
    return level, up


@functools.lru_cache(maxsize=16)
def _plan(k_public: int, k_sel: int) -> _Plan:
    n_leaves = -(-k_public // LEAF_WIDTH)
    widths = [LEAF_WIDTH] * (n_leaves - 1) + [k_public - LEAF_WIDTH * (n_leaves - 1)]
    levels = []
    while len(widths) > 1:
        level, widths = _level(widths, k_sel)
        levels.append(level)
    return _Plan(k_public, n_leaves, tuple(levels))


# ---------------------------------------------------------------------------
# Ranking / unranking of many maps at once
# ---------------------------------------------------------------------------


def _rank_maps(real: np.ndarray, k_sel: int) -> np.ndarray:
    """Ranks (object array of Python ints) of ``real`` (N, k') bool rows."""
    n, k_public = real.shape
    plan = _plan(k_public, k_sel)
    padded = np.zeros((n, plan.n_leaves * LEAF_WIDTH), bool)
    padded[:, :k_public] = real
    leaf_count, leaf_rank, _ = _leaf_tables()
    leaves = np.packbits(padded, axis=1, bitorder="little").view("<u2")
    counts = leaf_count[leaves]
    ranks = leaf_rank[leaves]
    for level in plan.levels:
        if ranks.dtype != level.dtype:
            ranks = ranks.astype(level.dtype)
        p = level.n_pairs
        c_lo, c_hi = counts[:, 0 : 2 * p : 2], counts[:, 1 : 2 * p : 2]
        tab = level.table_of_pair
        joined = (
            level.offset[tab, c_lo + c_hi, c_lo]
            + ranks[:, 0 : 2 * p : 2] * level.choose_hi[tab, c_hi]
            + ranks[:, 1 : 2 * p : 2]
        )
        counts_up = c_lo + c_hi
        if level.carry:
            joined = np.concatenate([joined, ranks[:, -1:]], axis=1)
            counts_up = np.concatenate([counts_up, counts[:, -1:]], axis=1)
        ranks, counts = joined, counts_up
    return ranks[:, 0].astype(object)


def _count_below(level: _Level, tab: np.ndarray, k: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per node, the low half's member count: offsets grow with it, so it is the last
    column of ``offset[tab, k]`` that is not past ``r``."""
    offset = level.offset
    if offset.dtype != object:
        return (offset[tab, k] <= r[..., None]).sum(axis=-1) - 1
    # Big integers compare slowly one by one: guess the count in floating point, confirm
    # it with two exact comparisons, and search exactly only where rounding misled.
    columns = offset.shape[-1]
    guess = (level.offset_approx[tab, k] <= r.astype(np.float64)[..., None]).sum(axis=-1) - 1
    guess = np.clip(guess, 0, columns - 1)
    after = np.minimum(guess + 1, columns - 1)
    right = (offset[tab, k, guess] <= r) & ((guess == columns - 1) | (offset[tab, k, after] > r))
    if right.all():
        return guess
    wrong = ~right
    t, kk, rr = tab[wrong], k[wrong], r[wrong]
    low, above = np.zeros_like(kk), np.full_like(kk, columns)
    for _ in range(columns.bit_length()):
        mid = (low + above) // 2
        fits = offset[t, kk, mid] <= rr
        low, above = np.where(fits, mid, low), np.where(fits, above, mid)
    guess[wrong] = low
    return guess


def _unrank_maps(ranks: np.ndarray, k_public: int, k_sel: int) -> np.ndarray:
    """Inverse of :func:`_rank_maps`: (N,) ranks, each below C(k', k_sel) -> (N, k') bool."""
    n = len(ranks)
    plan = _plan(k_public, k_sel)
    top = plan.levels[-1].dtype if plan.levels else np.dtype(np.uint64)
    ranks = np.asarray(ranks, dtype=object).reshape(n, 1).astype(top)
    counts = np.full((n, 1), k_sel, np.intp)
    for level in reversed(plan.levels):
        if ranks.dtype != level.dtype:
            ranks = ranks.astype(level.dtype)
        p = level.n_pairs
        k, r = counts[:, :p], ranks[:, :p]
        tab = np.broadcast_to(level.table_of_pair, k.shape)
        c_lo = _count_below(level, tab, k, r)
        rest = r - level.offset[tab, k, c_lo]
        c_hi = k - c_lo
        base = level.choose_hi[tab, c_hi]
        r_lo, r_hi = rest // base, rest % base
        down_counts = np.empty((n, 2 * p + level.carry), np.intp)
        down_ranks = np.empty((n, 2 * p + level.carry), ranks.dtype)
        down_counts[:, 0 : 2 * p : 2], down_counts[:, 1 : 2 * p : 2] = c_lo, c_hi
        down_ranks[:, 0 : 2 * p : 2], down_ranks[:, 1 : 2 * p : 2] = r_lo, r_hi
        if level.carry:
            down_counts[:, -1], down_ranks[:, -1] = counts[:, p], ranks[:, p]
        counts, ranks = down_counts, down_ranks
    leaves = _leaf_tables()[2][counts, ranks.astype(np.intp)].astype("<u2")
    bits = np.unpackbits(leaves.view(np.uint8), axis=1, bitorder="little")
    return bits[:, :k_public].astype(bool)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def _mask_k_sel(real: np.ndarray) -> int:
    """Check a (..., L, k') mask batch and return k_sel (members per row)."""
    if real.dtype != np.bool_:
        raise TypeError(f"real-position mask must be bool, got {real.dtype}")
    if real.ndim < 2 or real.shape[-1] == 0 or real.shape[-2] == 0:
        raise ValueError(f"real-position mask must be (L, k') with L, k' >= 1, got {real.shape}")
    per_row = real.sum(axis=-1)
    k_sel = int(per_row.flat[0])
    if not (per_row == k_sel).all():
        raise ValueError(
            "every map must have the same number of real entries, got counts "
            f"{sorted(set(per_row.ravel().tolist()))}"
        )
    _check_shape(1, real.shape[-1], k_sel)
    return k_sel


def encode_keys(real: np.ndarray, seals: np.ndarray | None = None) -> list[bytes]:
    """Keys of a batch of masks ``(B, L, k')`` (same k_sel everywhere), with the
    records' seals ``(B, 16)`` uint8 when they are sealed."""
    real = np.asarray(real)
    if real.ndim != 3:
        raise ValueError(f"expected a (B, L, k') batch of masks, got shape {real.shape}")
    if seals is not None and np.shape(seals) != (real.shape[0], SEAL_BYTES):
        raise ValueError(f"expected ({real.shape[0]}, {SEAL_BYTES}) seals, got "
                         f"{np.shape(seals)}")
    if real.shape[0] == 0:
        return []
    k_sel = _mask_k_sel(real)
    b, n_maps, k_public = real.shape
    _check_shape(n_maps, k_public, k_sel)
    radix = math.comb(k_public, k_sel)
    ranks = _rank_maps(real.reshape(b * n_maps, k_public), k_sel).reshape(b, n_maps)
    version = UNSEALED_VERSION if seals is None else KEY_VERSION
    header = _HEADER.pack(version, k_public, k_sel, n_maps)
    size = payload_bytes(n_maps, k_public, k_sel)
    keys = []
    for b, row in enumerate(ranks.tolist()):
        value = 0
        for rank in row:  # map 0 is the most significant digit
            value = value * radix + rank
        seal = b"" if seals is None else np.asarray(seals[b], np.uint8).tobytes()
        keys.append(header + seal + value.to_bytes(size, "big"))
    return keys


def encode_key(real: np.ndarray, seal: bytes | None = None) -> bytes:
    """Key of one ``(L, k')`` bool mask with the same number of True per row."""
    real = np.asarray(real)
    if real.ndim != 2:
        raise ValueError(f"expected an (L, k') mask, got shape {real.shape}")
    seals = None if seal is None else np.frombuffer(seal, np.uint8)[None]
    return encode_keys(real[None], seals)[0]


def parse_key_header(key: bytes) -> tuple[int, int, int]:
    """``(L, k', k_sel)`` from a key's header, checking version, sizes and length."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    if len(key) < HEADER_BYTES:
        raise KeyFormatError(
            f"key is {len(key)} bytes, shorter than its {HEADER_BYTES}-byte header")
    if len(key) > HEADER_BYTES + MAX_PAYLOAD_BYTES:
        raise KeyFormatError(f"key is {len(key)} bytes, over the {MAX_PAYLOAD_BYTES}-byte "
                             "payload limit")
    version, k_public, k_sel, n_maps = _HEADER.unpack_from(key)
    if version not in (UNSEALED_VERSION, KEY_VERSION):
        raise KeyFormatError(f"unsupported key format version {version} (this build reads "
                             f"{UNSEALED_VERSION} and {KEY_VERSION})")
    prefix = _prefix(version == KEY_VERSION)
    try:
        _check_shape(n_maps, k_public, k_sel)
    except KeyFormatError as exc:
        raise KeyFormatError(f"bad key header: {exc}") from None
    # Bounded work for any header: the float estimate first (within a byte of the exact
    # size), the exact size (a power of up to 2**19 bits) only for a plausible length.
    approx = _approx_payload_bytes(n_maps, k_public, k_sel)
    if abs(len(key) - prefix - approx) > 2:
        raise KeyFormatError(
            f"key is {len(key)} bytes, expected about {prefix + approx:.0f} for "
            f"L={n_maps}, k'={k_public}, k_sel={k_sel}"
        )
    expected = key_bytes(n_maps, k_public, k_sel, version == KEY_VERSION)
    if len(key) != expected:
        raise KeyFormatError(
            f"key is {len(key)} bytes, expected {expected} for L={n_maps}, k'={k_public}, "
            f"k_sel={k_sel}"
        )
    return n_maps, k_public, k_sel


@functools.lru_cache(maxsize=16)
def _radix_powers(radix: int, n_digits: int) -> tuple[int, ...]:
    return tuple(radix**n for n in range(n_digits + 1))


def _digits(value: int, n_digits: int, powers: tuple[int, ...]) -> list[int]:
    """Mixed-radix digits of ``value``, most significant first. Halving the digit count
    at each split is about a third faster than peeling one digit at a time."""
    if n_digits == 1:
        return [value]
    n_low = n_digits // 2
    high, low = divmod(value, powers[n_low])
    return _digits(high, n_digits - n_low, powers) + _digits(low, n_low, powers)


def decode_keys(
    keys: Sequence[bytes],
    n_maps: int | None = None,
    *,
    k_public: int | None = None,
    k_sel: int | None = None,
) -> np.ndarray:
    """Masks ``(B, L, k')`` of keys that share one configuration.

    ``n_maps``, ``k_public`` and ``k_sel``, when given, must match every key's header;
    with an empty batch, ``n_maps`` and ``k_public`` give the output's shape.
    """
    if len(keys) == 0:
        if n_maps is None or k_public is None:
            raise ValueError("decoding an empty batch needs n_maps and k_public for its shape")
        return np.zeros((0, n_maps, k_public), bool)
    shapes = {parse_key_header(key) for key in keys}
    if len(shapes) != 1:
        raise KeyFormatError(f"keys in one batch must share (L, k', k_sel), got {sorted(shapes)}")
    ((got_maps, got_public, got_sel),) = shapes
    for name, want, got in (
        ("L", n_maps, got_maps),
        ("k'", k_public, got_public),
        ("k_sel", k_sel, got_sel),
    ):
        if want is not None and want != got:
            raise KeyFormatError(f"key has {name}={got}, expected {name}={want}")
    radix = math.comb(got_public, got_sel)
    space = _space(got_maps, got_public, got_sel)
    prefix = _prefix(sealed_keys(keys))
    values = [int.from_bytes(key[prefix:], "big") for key in keys]
    for b, value in enumerate(values):
        if value >= space:
            raise KeyFormatError(
                f"key {b}: rank out of range (payload exceeds C({got_public},{got_sel})^{got_maps}); "
                "the key is corrupted"
            )
    powers = _radix_powers(radix, got_maps)
    ranks = np.empty(len(values) * got_maps, dtype=object)
    ranks[:] = [rank for value in values for rank in _digits(value, got_maps, powers)]
    masks = _unrank_maps(ranks, got_public, got_sel)
    return masks.reshape(len(values), got_maps, got_public)


def sealed_keys(keys: Sequence[bytes]) -> bool:
    """Whether ``keys`` (headers checked) carry seals; all or none must."""
    sealed = {bytes(key[:1]) == bytes([KEY_VERSION]) for key in keys}
    if len(sealed) != 1:
        raise KeyFormatError("keys in one batch must all be sealed or all be unsealed")
    return sealed.pop()


def key_seals(keys: Sequence[bytes]) -> np.ndarray | None:
    """The seals (B, 16) uint8 of sealed keys, or None for unsealed ones."""
    for key in keys:
        parse_key_header(key)
    if not keys or not sealed_keys(keys):
        return None
    return np.stack([np.frombuffer(bytes(key[HEADER_BYTES : HEADER_BYTES + SEAL_BYTES]),
                                   np.uint8) for key in keys])


def check_sealed(keys: Sequence[bytes]) -> None:
    """Refuse keys that carry no seal, where records are sealed (every public store's
    are). A version 1 key marks entries of an unsealed record: applied to a sealed one
    it keeps the wrong entries of unpadded values, a decode into noise that raises
    nothing, so it is refused here, alone or mixed with sealed keys."""
    bad = [b for b, key in enumerate(keys) if bytes(key[:1]) != bytes([KEY_VERSION])]
    if bad:
        raise KeyFormatError(
            f"{len(bad)} of {len(keys)} keys (first: key {bad[0]}) are not sealed-record "
            f"keys (version {KEY_VERSION}); unsealed (version {UNSEALED_VERSION}) keys "
            "cannot open sealed records")


def stored_records(mask: np.ndarray, values: np.ndarray, keys: Sequence[bytes]
                   ) -> Ambiguated:
    """Sealed records as a public store holds them (``mask`` (B, L, m), ``values``
    (B, L, k')) with their items' keys: what a key holder opens. Every key must be a
    sealed-record key of the records' shape (:func:`check_sealed`)."""
    if len(keys) != len(mask):
        raise ValueError(f"{len(keys)} keys for {len(mask)} records")
    for key in keys:
        parse_key_header(key)  # a malformed key is reported as such, first
    check_sealed(keys)
    n_maps, k_public = values.shape[1], values.shape[2]
    real = decode_keys(keys, n_maps, k_public=k_public)
    seals = key_seals(keys)
    return Ambiguated(mask, values, real,
                      np.zeros((0, SEAL_BYTES), np.uint8) if seals is None else seals)


def decode_key(
    key: bytes,
    n_maps: int | None = None,
    *,
    k_public: int | None = None,
    k_sel: int | None = None,
) -> np.ndarray:
    """The ``(L, k')`` bool mask of one key; ``ValueError`` on any malformed key."""
    return decode_keys([key], n_maps, k_public=k_public, k_sel=k_sel)[0]


def rank_subsets(real: np.ndarray) -> list[int]:
    """Rank of each row of an (N, k') mask among the C(k', k_sel) subsets (k_sel per row)."""
    real = np.asarray(real)
    k_sel = _mask_k_sel(real)
    return [int(r) for r in _rank_maps(real.reshape(-1, real.shape[-1]), k_sel)]


# ---------------------------------------------------------------------------
# Lower-fidelity keys
# ---------------------------------------------------------------------------


def lower_fidelity(real: np.ndarray, public_values: np.ndarray, k_low: int) -> np.ndarray:
    """Keep, per map, the ``k_low`` real entries of largest magnitude.

    ``real`` and ``public_values`` are (..., L, k'); ties in magnitude go to the lower
    position, so the result depends on nothing but its inputs.
    """
    real = np.asarray(real)
    values = np.asarray(public_values)
    if real.dtype != np.bool_:
        raise TypeError(f"real-position mask must be bool, got {real.dtype}")
    if real.shape != values.shape:
        raise ValueError(f"mask {real.shape} and values {values.shape} differ in shape")
    if not np.isfinite(values[real]).all():
        raise ValueError("public values at real positions must be finite")
    fewest = int(real.sum(axis=-1).min()) if real.size else 0
    if not 1 <= k_low <= fewest:
        raise ValueError(f"k_low={k_low} must be in 1..{fewest} (real entries per map)")
    magnitude = np.where(real, np.abs(values), -np.inf)
    # Stable sort of the negated magnitude: largest first, equal ones by position.
    order = np.argsort(-magnitude, axis=-1, kind="stable")[..., :k_low]
    out = np.zeros(real.shape, bool)
    np.put_along_axis(out, order, True, axis=-1)
    return out


# ---------------------------------------------------------------------------
# Building blocks for other key formats (imambig.mechanism.grant_entries)
# ---------------------------------------------------------------------------


def unrank_subsets(ranks: Sequence[int], width: int, k_sel: int) -> np.ndarray:
    """Inverse of :func:`rank_subsets`: (N,) ranks below C(width, k_sel) -> (N, width)."""
    _check_shape(1, width, k_sel)
    if len(ranks) == 0:
        return np.zeros((0, width), bool)
    return _unrank_maps(np.asarray(list(ranks), dtype=object), width, k_sel)


def pack_digits(digits: Sequence[int], radix: int) -> int:
    """Digits below ``radix``, most significant first, as one integer."""
    value = 0
    for d in digits:
        value = value * radix + d
    return value


def unpack_digits(value: int, n_digits: int, radix: int) -> list[int]:
    """Inverse of :func:`pack_digits` for a value below ``radix ** n_digits``."""
    if n_digits == 0:
        return []
    return _digits(value, n_digits, _radix_powers(radix, n_digits))
