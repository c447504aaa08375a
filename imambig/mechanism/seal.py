"""Sealing: the public record of an ambiguated code, made independent of the image.

Ambiguation alone hides which public entries are real, but the real values still sit in
the clear at their real positions, and the public code as a whole is a function of the
image: a network trained on the attacker's own (public code -> image) pairs decodes it
into a recognisable face, and two releases of near-duplicates can be compared entry by
entry (``docs/threat-model.md`` has the measured numbers). Sealing closes both:

- each code-map's positions go through a secret permutation of the map, so the public
  mask is a uniformly random ``k'``-subset whatever the image;
- each value's symbol (sign, exponent, the kept mantissa bits of the public quantizer;
  ``ALPHABET`` symbols) is shifted by a secret uniform pad, modulo the alphabet, so every
  public value is uniform over the alphabet whatever the code.

Both come from an AES-CTR stream under the record's 16-byte *seal*, and the seal is
HMAC(owner's seal key, ambiguated record): the same image publishes the same record
under any id (an identical record says only "same image"), and any change to the code,
however small, gives an unrelated seal and so a record that shares nothing with the
first. The seal travels inside the item's key (``imambig.mechanism.keys``); a key's
real-entry mask refers to the sealed record's entries, so lower-fidelity keys and the
attack suite work on what is stored.

Who holds a seal holds the ambiguated record (the paper's public code), not the image:
which of its entries are real is still the key's support.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imambig.mechanism.quantizer import FULL_MANTISSA, VALUE_BITS
from imambig.mechanism.record import Ambiguated

SEAL_BYTES = 16  # an AES-128 key per record
_EXPONENTS = 31  # float16 exponents 0..30 (31 is inf/NaN, which the quantizer never makes)


def alphabet(bits: int = VALUE_BITS) -> int:
    """Number of distinct public values: sign x finite exponent x kept mantissa."""
    return 2 * _EXPONENTS << bits


def to_symbols(values: np.ndarray, bits: int = VALUE_BITS) -> np.ndarray:
    """float16 values with ``bits`` mantissa bits -> int64 symbols in [0, alphabet)."""
    raw = np.ascontiguousarray(values, dtype=np.float16).view(np.uint16).astype(np.int64)
    drop = FULL_MANTISSA - bits
    body = (raw & 0x7FFF) >> drop
    if (raw & ((1 << drop) - 1)).any() or (body >= _EXPONENTS << bits).any():
        raise ValueError(f"values must be finite float16 with {bits} mantissa bits")
    return (raw >> 15) * (_EXPONENTS << bits) + body


def from_symbols(symbols: np.ndarray, bits: int = VALUE_BITS) -> np.ndarray:
    sign, body = np.divmod(np.asarray(symbols, dtype=np.int64), _EXPONENTS << bits)
    raw = (sign << 15) | (body << (FULL_MANTISSA - bits))
    return raw.astype(np.uint16).view(np.float16)


def record_seals(seal_key: bytes, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(B, SEAL_BYTES) uint8: HMAC-SHA256(seal key, record) of each ambiguated record,
    over its packed mask and little-endian values (the same bytes on every machine)."""
    out = np.empty((len(mask), SEAL_BYTES), np.uint8)
    for i in range(len(mask)):
        msg = np.packbits(mask[i]).tobytes() + np.asarray(values[i], "<f2").tobytes()
        out[i] = np.frombuffer(hmac.new(seal_key, msg, hashlib.sha256).digest()[:SEAL_BYTES],
                               np.uint8)
    return out


def _stream(seal: bytes, n_maps: int, code_length: int) -> tuple[np.ndarray, np.ndarray]:
    """A record's secret permutation and pads, map by map from one AES-CTR stream (so
    the first maps' are the same whatever ``n_maps``).

    Returns ``order`` (L, m): ``order[l, q]`` is the original position published at
    position ``q``, and ``pads`` (L, m) in [0, 2^64) for the value at public position q.
    """
    enc = Cipher(algorithms.AES(bytes(seal)), modes.CTR(bytes(16))).encryptor()
    words = np.frombuffer(enc.update(bytes(16 * n_maps * code_length)), "<u8")
    words = words.reshape(n_maps, 2, code_length)
    order = np.argsort(words[:, 0], axis=1, kind="stable")  # a uniform permutation
    return order, words[:, 1]


def _pads_at(pads: np.ndarray, public: np.ndarray, size: int) -> np.ndarray:
    """The pads (L, k') of the values published at positions ``public``, in [0, size)
    (the bias of reducing 64-bit words is below 2^-55)."""
    return (np.take_along_axis(pads, public, 1) % np.uint64(size)).astype(np.int64)


def _entry_positions(mask: np.ndarray) -> np.ndarray:
    """(L, m) mask with k' per row -> (L, k') positions in increasing order."""
    return np.nonzero(mask)[1].reshape(mask.shape[0], -1)


def seal(amb: Ambiguated, seal_key: bytes, bits: int = VALUE_BITS) -> Ambiguated:
    """The sealed records of ``amb`` (unsealed, ``amb.seals`` None): permuted masks,
    padded values, ``real`` in the sealed entries' order, and the seals."""
    if amb.seals is not None:
        raise ValueError("records are sealed already")
    B, L, m = amb.mask.shape
    size = alphabet(bits)
    seals = record_seals(seal_key, amb.mask, amb.values)
    mask = np.zeros_like(amb.mask)
    values = np.empty_like(amb.values)
    real = np.empty_like(amb.real)
    rows = np.arange(L)[:, None]
    for i in range(B):
        order, pads = _stream(seals[i].tobytes(), L, m)
        where = np.empty_like(order)
        where[rows, order] = np.arange(m)  # where[l, p]: public position of position p
        moved = np.take_along_axis(where, _entry_positions(amb.mask[i]), 1)
        sort = np.argsort(moved, axis=1, kind="stable")
        public = np.take_along_axis(moved, sort, 1)
        symbols = to_symbols(np.take_along_axis(amb.values[i], sort, 1), bits)
        pad = _pads_at(pads, public, size)
        values[i] = from_symbols((symbols + pad) % size, bits)
        real[i] = np.take_along_axis(amb.real[i], sort, 1)
        mask[i, rows, public] = True
    return Ambiguated(mask, values, real, seals)


def unseal(amb: Ambiguated, bits: int = VALUE_BITS) -> Ambiguated:
    """The ambiguated records under sealed ones (``amb.seals`` set): original positions
    in increasing order, values unpadded, ``real`` carried along."""
    if amb.seals is None:
        raise ValueError("records are not sealed")
    B, L, m = amb.mask.shape
    size = alphabet(bits)
    mask = np.zeros_like(amb.mask)
    values = np.empty_like(amb.values)
    real = np.empty_like(amb.real)
    rows = np.arange(L)[:, None]
    for i in range(B):
        order, pads = _stream(np.asarray(amb.seals[i], np.uint8).tobytes(), L, m)
        public = _entry_positions(amb.mask[i])
        pad = _pads_at(pads, public, size)
        v = from_symbols((to_symbols(amb.values[i], bits) - pad) % size, bits)
        original = np.take_along_axis(order, public, 1)
        sort = np.argsort(original, axis=1, kind="stable")
        values[i] = np.take_along_axis(v, sort, 1)
        real[i] = np.take_along_axis(amb.real[i], sort, 1)
        mask[i, rows, np.take_along_axis(original, sort, 1)] = True
    return Ambiguated(mask, values, real)
