"""Authenticated encryption of keystore chunks (AES-256-GCM, deterministic nonces).

Every ciphertext is bound to its place by associated data (store id, array name, chunk
index, schema version): a chunk copied to another store, array or index fails to open,
just like a modified one.

Nonces are derived, not drawn: ``nonce = HMAC-SHA256(nonce_key, len(aad) || aad ||
plaintext)[:12]``, so re-encoding the same keys gives byte-identical chunks (reproducible
stores, idempotent retries). This is safe for GCM because a nonce repeats under one key
only when the whole (aad, plaintext) input repeats, and then the ciphertext repeats too:
nothing is revealed beyond "this chunk is unchanged". Distinct inputs collide only by an
HMAC collision on 96 bits, negligible for any realistic number of chunks. The length
prefix keeps the input unambiguous (``aad="ab", plaintext="c"`` must not equal
``aad="a", plaintext="bc"``). ``nonce_key`` and the encryption key are separate HKDF
outputs of the data key, so the nonce reveals nothing about the encryption key.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imambig.errors import TamperedError

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_AAD_DOMAIN = b"imambig/chunk/v1"

__all__ = ["ChunkCipher", "TamperedError", "chunk_aad", "describe_chunk", "open_sealed", "seal"]


def subkey(data_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(data_key)


class ChunkCipher:
    """Seals and opens many chunks under one data key (derives the subkeys once)."""

    __slots__ = ("_aead", "_nonce_key")

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        self._aead = AESGCM(subkey(data_key, b"imambig/chunk/encrypt/v1"))
        self._nonce_key = subkey(data_key, b"imambig/chunk/nonce/v1")

    def __repr__(self) -> str:
        return "ChunkCipher(****)"

    def nonce(self, plaintext: bytes, aad: bytes) -> bytes:
        mac = hmac.new(self._nonce_key, struct.pack(">Q", len(aad)), hashlib.sha256)
        mac.update(aad)
        mac.update(plaintext)
        return mac.digest()[:NONCE_BYTES]

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce || ciphertext || tag``; identical inputs give identical bytes."""
        nonce = self.nonce(plaintext, aad)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes, what: str = "sealed data") -> bytes:
        """Plaintext of ``blob``; :class:`TamperedError` naming ``what`` if it fails."""
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise TamperedError(
                f"{what} failed authentication: {len(blob)} bytes is shorter than nonce and "
                "tag (truncated)"
            )
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperedError(
                f"{what} failed authentication: tampered, truncated, or wrong key"
            ) from None


def seal(data_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a deterministic nonce: ``nonce || ciphertext || tag``."""
    return ChunkCipher(data_key).seal(plaintext, aad)


def open_sealed(data_key: bytes, blob: bytes, aad: bytes, what: str = "sealed data") -> bytes:
    """Inverse of :func:`seal`; raises :class:`TamperedError` describing ``what``."""
    return ChunkCipher(data_key).open(blob, aad, what)


def _field(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def chunk_aad(store_id: str, array: str, chunk: int | Sequence[int], schema: str) -> bytes:
    """Associated data binding a chunk to (store, array, chunk index, schema version).

    Fields are length-prefixed so no two different places encode to the same bytes.
    """
    index = (chunk,) if isinstance(chunk, int) else tuple(chunk)
    if not index or any(not isinstance(i, int) or i < 0 for i in index):
        raise ValueError(f"chunk index must be non-negative integers, got {chunk!r}")
    return b"".join(
        [
            _AAD_DOMAIN,
            _field(store_id),
            _field(array),
            struct.pack(f">I{len(index)}Q", len(index), *index),
            _field(schema),
        ]
    )


def describe_chunk(array: str, chunk: int | Sequence[int]) -> str:
    """The ``what`` of a keystore chunk in error messages."""
    index = chunk if isinstance(chunk, int) else ".".join(str(i) for i in chunk)
    return f"keystore chunk {index} of {array!r}"
