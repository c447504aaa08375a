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

Everything here works on whole batches of records as tensors, on whatever device they
live (the encoder's): the per-record work is the HMAC and the AES keystream, made on
the CPU in bulk; permutations, pads and symbols are batched integer tensor code.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imambig.mechanism.quantizer import FULL_MANTISSA, VALUE_BITS
from imambig.mechanism.sorting import sort_distinct, stable_argsort

SEAL_BYTES = 16  # an AES-128 key per record
_EXPONENTS = 31  # float16 exponents 0..30 (31 is inf/NaN, which the quantizer never makes)
_LOW63 = 0x7FFF_FFFF_FFFF_FFFF
_SIGN64 = -(1 << 63)


def alphabet(bits: int = VALUE_BITS) -> int:
    """Number of distinct public values: sign x finite exponent x kept mantissa."""
    return 2 * _EXPONENTS << bits


def symbols_of(values: torch.Tensor, bits: int = VALUE_BITS) -> torch.Tensor:
    """float16 values with ``bits`` mantissa bits -> int64 symbols in [0, alphabet)."""
    raw = values.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    drop = FULL_MANTISSA - bits
    body = (raw & 0x7FFF) >> drop
    if bool(((raw & ((1 << drop) - 1)) != 0).any()) or bool((body >= _EXPONENTS << bits).any()):
        raise ValueError(f"values must be finite float16 with {bits} mantissa bits")
    return (raw >> 15) * (_EXPONENTS << bits) + body


def values_of(symbols: torch.Tensor, bits: int = VALUE_BITS) -> torch.Tensor:
    """int64 symbols in [0, alphabet) -> float16 values (inverse of :func:`symbols_of`)."""
    per_sign = _EXPONENTS << bits
    sign, body = symbols // per_sign, symbols % per_sign
    raw = (sign << 15) | (body << (FULL_MANTISSA - bits))
    return (raw - ((raw >> 15) << 16)).to(torch.int16).view(torch.float16)


def to_symbols(values: np.ndarray, bits: int = VALUE_BITS) -> np.ndarray:
    """:func:`symbols_of` for numpy arrays."""
    return symbols_of(torch.from_numpy(np.ascontiguousarray(values, np.float16)), bits).numpy()


def from_symbols(symbols: np.ndarray, bits: int = VALUE_BITS) -> np.ndarray:
    """:func:`values_of` for numpy arrays."""
    return values_of(torch.from_numpy(np.asarray(symbols, np.int64)), bits).numpy()


def record_seals(seal_key: bytes, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(B, SEAL_BYTES) uint8: HMAC-SHA256(seal key, record) of each ambiguated record,
    over its packed mask and little-endian values (the same bytes on every machine)."""
    packed = np.packbits(np.asarray(mask).reshape(len(mask), -1), axis=1)
    raw = np.ascontiguousarray(values, "<f2").reshape(len(values), -1)
    out = np.empty((len(mask), SEAL_BYTES), np.uint8)
    for i in range(len(mask)):
        msg = packed[i].tobytes() + raw[i].tobytes()
        out[i] = np.frombuffer(hmac.new(seal_key, msg, hashlib.sha256).digest()[:SEAL_BYTES],
                               np.uint8)
    return out


def keystreams(seals: np.ndarray, n_maps: int, code_length: int) -> np.ndarray:
    """(B, L, 2, m) int64: each record's AES-CTR stream under its seal, map by map (so
    the first maps' are the same whatever ``n_maps``), as little-endian 64-bit words
    (two's complement: order and residues are taken as unsigned by the callers)."""
    zeros = bytes(16 * n_maps * code_length)
    out = np.empty((len(seals), n_maps, 2, code_length), "<i8")
    flat = out.reshape(len(seals), -1)
    for i, seal in enumerate(seals):
        enc = Cipher(algorithms.AES(np.asarray(seal, np.uint8).tobytes()),
                     modes.CTR(bytes(16))).encryptor()
        flat[i] = np.frombuffer(enc.update(zeros), "<i8")
    return out


def _orders(words: torch.Tensor) -> torch.Tensor:
    """(..., m) 64-bit words -> the permutation sorting them as unsigned numbers:
    ``order[..., q]`` is the original position published at public position q."""
    return stable_argsort(words ^ _SIGN64)  # the sign flip orders them as unsigned


def _residues(words: torch.Tensor, size: int) -> torch.Tensor:
    """Unsigned 64-bit ``words`` modulo ``size`` (the bias of reducing 64-bit words is
    below 2^-55)."""
    half = (words >> 1) & _LOW63  # words // 2 as unsigned
    return ((half % size) * 2 + (words & 1)) % size


def _stream(seal: bytes, n_maps: int, code_length: int) -> tuple[np.ndarray, np.ndarray]:
    """One record's secret permutation ``order`` (L, m) and pads (L, m), the latter as
    unsigned 64-bit words (for :func:`_pads_at`)."""
    words = torch.from_numpy(keystreams(np.frombuffer(seal, np.uint8)[None], n_maps,
                                        code_length)[0])
    return _orders(words[:, 0]).numpy(), words[:, 1].numpy().view(np.uint64)


def _pads_at(pads: np.ndarray, public: np.ndarray, size: int) -> np.ndarray:
    """The pads (L, k') of the values published at positions ``public``, in [0, size)."""
    return (np.take_along_axis(pads, public, 1) % np.uint64(size)).astype(np.int64)


def entry_positions(mask: torch.Tensor) -> torch.Tensor:
    """(..., L, m) mask with k' per row -> (..., L, k') positions in increasing order."""
    k_public = int(mask[(0,) * (mask.ndim - 1)].sum()) if mask.numel() else 0
    return mask.nonzero()[:, -1].view(*mask.shape[:-1], k_public)


def _streams_on(seals: np.ndarray, shape: torch.Size, device: torch.device) -> torch.Tensor:
    _, L, m = shape
    return torch.from_numpy(keystreams(seals, L, m)).to(device)


def seal_records(mask: torch.Tensor, values: torch.Tensor, real: torch.Tensor,
                 seal_key: bytes, bits: int = VALUE_BITS
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Seal ambiguated records, a batch at once: ``mask`` (B, L, m) bool, ``values``
    (B, L, k') float16 in position order, ``real`` (B, L, k') bool, on any device ->
    the sealed mask, values and real (same device, ``real`` in the sealed entries'
    order) and the seals (B, SEAL_BYTES) uint8."""
    size = alphabet(bits)
    seals = record_seals(seal_key, mask.cpu().numpy(), values.cpu().numpy())
    words = _streams_on(seals, mask.shape, mask.device)
    order = _orders(words[:, :, 0])
    where = torch.empty_like(order).scatter_(  # where[b, l, p]: public position of p
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    moved = where.gather(-1, entry_positions(mask))
    public, sort = sort_distinct(moved)
    pad = _residues(words[:, :, 1].gather(-1, public), size)
    sealed_values = values_of((symbols_of(values.gather(-1, sort), bits) + pad) % size, bits)
    sealed_mask = torch.zeros_like(mask).scatter_(-1, public, True)
    return sealed_mask, sealed_values, real.gather(-1, sort), seals


def unseal_records(mask: torch.Tensor, values: torch.Tensor, real: torch.Tensor,
                   seals: np.ndarray, bits: int = VALUE_BITS
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ambiguated records under sealed ones (arguments as :func:`seal_records`
    returns them): original positions in increasing order, values unpadded, ``real``
    carried along."""
    size = alphabet(bits)
    words = _streams_on(np.asarray(seals, np.uint8), mask.shape, mask.device)
    public = entry_positions(mask)
    pad = _residues(words[:, :, 1].gather(-1, public), size)
    plain = values_of((symbols_of(values, bits) - pad) % size, bits)
    original, sort = sort_distinct(_orders(words[:, :, 0]).gather(-1, public))
    opened_mask = torch.zeros_like(mask).scatter_(-1, original, True)
    return opened_mask, plain.gather(-1, sort), real.gather(-1, sort)
