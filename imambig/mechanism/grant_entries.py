"""Lower-fidelity keys: the revealed entries themselves, and no seal.

A grant of fidelity ``k_low`` must reveal exactly ``k_low`` real entries per code-map and
nothing that unseals, locates or ranks any other entry of the record. A full key cannot
be cut down to that: its 16-byte seal opens every one of the record's ``k'`` entries
per map, and a grantee who knows ``k_low`` of the ``k`` real ones finds most of the rest
by re-encoding (``docs/privacy.md`` has the numbers). So a lower-fidelity key carries no
seal and points at nothing in the sealed public record: per map, the original positions
of its ``k_low`` entries (a ``k_low``-subset of the ``m`` positions, ranked as
:mod:`imambig.mechanism.keys` ranks supports) and their values (symbols of the public
quantizer's alphabet, :func:`imambig.mechanism.seal.to_symbols`). Its bytes are a
function of those entries alone: two records that agree on them give the same key.

Key layout (integers big-endian)::

    version 3 (u8) | m (u16) | k_low (u16) | L (u16) | positions | values

``positions``: the L subset ranks, mixed-radix in ``C(m, k_low)``, in
``ceil(L log2 C(m, k_low) / 8)`` bytes; ``values``: the ``L * k_low`` symbols in position
order, base ``alphabet()``, in ``ceil(L k_low log2 alphabet / 8)`` bytes.

Which entries. The owner ranks a record's real entries by a secret order derived from
the record's seal (AES-CTR under HMAC(seal, ``imambig/grant-order/v1``), one 64-bit word
per map position): the seal is a keyed function of the record, so identical records get
identical subsets whatever names they are filed under, and the order is fixed per
record, so grants at several ``k_low`` nest and together reveal no more than the largest.
To anyone without the seal the subset is a uniformly random ``k_low`` of the ``k``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imambig.errors import KeyFormatError
from imambig.mechanism import keys as support_keys
from imambig.mechanism.record import Ambiguated, scatter_code
from imambig.mechanism.seal import SEAL_BYTES, alphabet, from_symbols, to_symbols

ENTRIES_VERSION = 3
_ORDER_INFO = b"imambig/grant-order/v1"
_HEADER = support_keys._HEADER  # the same five fields as a support key's header


def is_entries_key(key: bytes) -> bool:
    """Whether ``key`` is a lower-fidelity (entries) key rather than a support key."""
    return len(key) > 0 and key[0] == ENTRIES_VERSION


# ---------------------------------------------------------------------------
# Which entries a grant reveals
# ---------------------------------------------------------------------------


def grant_order(seal: bytes, n_maps: int, code_length: int) -> np.ndarray:
    """(L, m) uint64 secret scores of a record's map positions, from its seal."""
    if len(seal) != SEAL_BYTES:
        raise ValueError(f"a seal is {SEAL_BYTES} bytes, got {len(seal)}")
    key = hmac.new(bytes(seal), _ORDER_INFO, hashlib.sha256).digest()[:16]
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    words = np.frombuffer(enc.update(bytes(8 * n_maps * code_length)), "<u8")
    return words.reshape(n_maps, code_length)


def choose_revealed(real: np.ndarray, scores: np.ndarray, k_low: int) -> np.ndarray:
    """Per map, the ``k_low`` True entries of ``real`` (..., L, m) with the highest
    ``scores`` (same shape): a bool mask of the same shape."""
    fewest = int(real.sum(axis=-1).min()) if real.size else 0
    if not 1 <= k_low <= fewest:
        raise ValueError(f"k_low={k_low} must be in 1..{fewest} (real entries per map)")
    desc = np.argsort(scores, axis=-1, kind="stable")[..., ::-1]
    real_desc = np.take_along_axis(real, desc, -1)
    take = real_desc & (np.cumsum(real_desc, axis=-1) <= k_low)
    out = np.zeros(real.shape, bool)
    np.put_along_axis(out, desc, take, axis=-1)
    return out


def revealed_entries(amb: Ambiguated, k_low: int) -> tuple[np.ndarray, np.ndarray]:
    """What a ``k_low`` grant of each sealed record of ``amb`` reveals: the positions
    (B, L, m) bool, ``k_low`` per map, and their values (B, L, k_low) float16 in position
    order. ``amb.real`` must be the true support (the full key's)."""
    if amb.seals is None:
        raise ValueError("lower-fidelity grants are cut from sealed records")
    opened = amb.opened()
    B, L, m = opened.mask.shape
    real = np.zeros((B, L, m), bool)
    dense = np.zeros((B, L, m), np.float16)
    real[opened.mask] = opened.real.ravel()
    dense[opened.mask] = opened.values.ravel()
    scores = np.stack([grant_order(np.asarray(s, np.uint8).tobytes(), L, m)
                       for s in amb.seals])
    chosen = choose_revealed(real, scores, k_low)
    return chosen, dense[chosen].reshape(B, L, k_low)


def random_views(codes: torch.Tensor, k_low: int, generator: torch.Generator) -> torch.Tensor:
    """Top-k ``codes`` (N, L, m) with a uniformly random ``k_low`` of each map's
    non-zeros kept: what a grant of that fidelity holds, to anyone without the seal
    (grant decoders and grantee attacks train on these)."""
    score = torch.rand(codes.shape, generator=generator).masked_fill(codes == 0, -1.0)
    keep = torch.zeros_like(codes, dtype=torch.bool).scatter(
        -1, score.topk(k_low, dim=-1).indices, True)
    return torch.where(keep, codes, torch.zeros_like(codes))


def entries_code(mask: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """The dense (B, L, m) code a grantee decodes: its entries, zero elsewhere."""
    return scatter_code(mask, values)


# ---------------------------------------------------------------------------
# Bytes
# ---------------------------------------------------------------------------


def _symbol_bytes(n_symbols: int) -> int:
    return ((alphabet() ** n_symbols - 1).bit_length() + 7) // 8 if n_symbols else 0


def entries_key_bytes(n_maps: int, code_length: int, k_low: int) -> int:
    """Length of a lower-fidelity key."""
    return (_HEADER.size + support_keys.payload_bytes(n_maps, code_length, k_low)
            + _symbol_bytes(n_maps * k_low))


def encode_entries_keys(mask: np.ndarray, values: np.ndarray) -> list[bytes]:
    """Keys of (B, L, m) position masks (``k_low`` per map) and their (B, L, k_low)
    float16 values in position order."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 3 or mask.shape[0] == 0:
        raise ValueError(f"expected a non-empty (B, L, m) batch of masks, got {mask.shape}")
    B, L, m = mask.shape
    k_low = int(mask[0, 0].sum())
    if not (mask.sum(axis=-1) == k_low).all() or np.shape(values) != (B, L, k_low):
        raise ValueError(f"every map needs the same number of entries, with ({B}, {L}, "
                         f"k_low) values; got values {np.shape(values)}")
    support_keys._check_shape(L, m, k_low)
    radix = math.comb(m, k_low)
    ranks = support_keys.rank_subsets(mask.reshape(B * L, m))
    symbols = to_symbols(np.asarray(values, np.float16)).reshape(B, -1).tolist()
    header = _HEADER.pack(ENTRIES_VERSION, m, k_low, L)
    pos_bytes = support_keys.payload_bytes(L, m, k_low)
    sym_bytes = _symbol_bytes(L * k_low)
    return [header
            + support_keys.pack_digits(ranks[b * L : (b + 1) * L], radix).to_bytes(pos_bytes, "big")
            + support_keys.pack_digits(symbols[b], alphabet()).to_bytes(sym_bytes, "big")
            for b in range(B)]


def parse_entries_header(key: bytes) -> tuple[int, int, int]:
    """``(L, m, k_low)`` of a lower-fidelity key, its version and length checked (a
    float estimate first, so a hostile header costs no big-integer work)."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    if len(key) < _HEADER.size or len(key) > _HEADER.size + 2 * support_keys.MAX_PAYLOAD_BYTES:
        raise KeyFormatError(f"lower-fidelity key of {len(key)} bytes is out of bounds")
    version, m, k_low, n_maps = _HEADER.unpack_from(key)
    if version != ENTRIES_VERSION:
        raise KeyFormatError(f"not a lower-fidelity key (version {version}, expected "
                             f"{ENTRIES_VERSION})")
    try:
        support_keys._check_shape(n_maps, m, k_low)
    except KeyFormatError as exc:
        raise KeyFormatError(f"bad lower-fidelity key header: {exc}") from None
    approx = (support_keys._approx_payload_bytes(n_maps, m, k_low)
              + n_maps * k_low * math.log2(alphabet()) / 8)
    if abs(len(key) - _HEADER.size - approx) > 3:
        raise KeyFormatError(f"lower-fidelity key is {len(key)} bytes, expected about "
                             f"{_HEADER.size + approx:.0f} for L={n_maps}, m={m}, k_low={k_low}")
    if len(key) != entries_key_bytes(n_maps, m, k_low):
        raise KeyFormatError(f"lower-fidelity key is {len(key)} bytes, expected "
                             f"{entries_key_bytes(n_maps, m, k_low)}")
    return n_maps, m, k_low


def decode_entries_keys(keys: Sequence[bytes], n_maps: int | None = None,
                        code_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions (B, L, m) and values (B, L, k_low) of lower-fidelity keys that share
    one shape; ``n_maps`` / ``code_length``, when given, must match it."""
    if not keys:
        raise ValueError("no keys to decode")
    shapes = {parse_entries_header(k) for k in keys}
    if len(shapes) != 1:
        raise KeyFormatError(f"keys in one batch must share (L, m, k_low), got {sorted(shapes)}")
    ((L, m, k_low),) = shapes
    if (n_maps is not None and n_maps != L) or (code_length is not None and code_length != m):
        raise KeyFormatError(f"key is for L={L}, m={m}; the model has L={n_maps}, "
                             f"m={code_length}")
    radix, size = math.comb(m, k_low), alphabet()
    pos_bytes = support_keys.payload_bytes(L, m, k_low)
    ranks, symbols = [], []
    for i, key in enumerate(keys):
        body = bytes(key[_HEADER.size :])
        pos = int.from_bytes(body[:pos_bytes], "big")
        sym = int.from_bytes(body[pos_bytes:], "big")
        if pos >= radix**L or sym >= size ** (L * k_low):
            raise KeyFormatError(f"lower-fidelity key {i}: payload out of range (corrupted)")
        ranks += support_keys.unpack_digits(pos, L, radix)
        symbols += support_keys.unpack_digits(sym, L * k_low, size)
    mask = support_keys.unrank_subsets(ranks, m, k_low).reshape(len(keys), L, m)
    values = from_symbols(np.array(symbols, np.int64)).reshape(len(keys), L, k_low)
    return mask, values
