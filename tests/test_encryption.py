"""Keystore chunk encryption: deterministic, bound to its place, tamper-evident."""

from __future__ import annotations

import pytest

from imambig.access.encryption import (
    NONCE_BYTES,
    TAG_BYTES,
    ChunkCipher,
    TamperedError,
    chunk_aad,
    describe_chunk,
    open_sealed,
    seal,
)

KEY = bytes(range(32))
PLAINTEXT = b"per-image keys " * 40


def aad(chunk: int, store: str = "store-1", array: str = "keys") -> bytes:
    return chunk_aad(store, array, chunk, "keystore/v1")


def test_round_trip_and_layout() -> None:
    blob = seal(KEY, PLAINTEXT, aad(0))
    assert len(blob) == NONCE_BYTES + len(PLAINTEXT) + TAG_BYTES
    assert PLAINTEXT not in blob
    assert open_sealed(KEY, blob, aad(0)) == PLAINTEXT
    assert open_sealed(KEY, seal(KEY, b"", aad(1)), aad(1)) == b""


def test_sealing_is_deterministic() -> None:
    assert seal(KEY, PLAINTEXT, aad(0)) == seal(KEY, PLAINTEXT, aad(0))
    assert ChunkCipher(KEY).seal(PLAINTEXT, aad(0)) == seal(KEY, PLAINTEXT, aad(0))


def test_nonce_differs_whenever_the_input_does() -> None:
    nonces = {
        seal(KEY, PLAINTEXT, aad(0))[:NONCE_BYTES],
        seal(KEY, PLAINTEXT, aad(1))[:NONCE_BYTES],
        seal(KEY, PLAINTEXT + b"!", aad(0))[:NONCE_BYTES],
        seal(bytes(32), PLAINTEXT, aad(0))[:NONCE_BYTES],
    }
    assert len(nonces) == 4
    # The split between aad and plaintext is part of the nonce input.
    assert seal(KEY, b"c", b"ab")[:NONCE_BYTES] != seal(KEY, b"bc", b"a")[:NONCE_BYTES]


def test_every_flipped_byte_is_detected() -> None:
    blob = seal(KEY, PLAINTEXT[:64], aad(3))
    for position in range(len(blob)):
        bad = bytearray(blob)
        bad[position] ^= 0x01
        with pytest.raises(TamperedError, match="keystore chunk 3 of 'keys' failed authentication"):
            open_sealed(KEY, bytes(bad), aad(3), describe_chunk("keys", 3))


def test_truncation_is_detected() -> None:
    blob = seal(KEY, PLAINTEXT, aad(0))
    for length in (0, NONCE_BYTES, NONCE_BYTES + TAG_BYTES - 1, len(blob) - 1):
        with pytest.raises(TamperedError, match="failed authentication"):
            open_sealed(KEY, blob[:length], aad(0))


def test_swapped_chunks_fail() -> None:
    first, second = seal(KEY, b"chunk zero", aad(0)), seal(KEY, b"chunk one", aad(1))
    with pytest.raises(TamperedError):
        open_sealed(KEY, second, aad(0))
    with pytest.raises(TamperedError):
        open_sealed(KEY, first, aad(1))


def test_chunks_are_bound_to_store_array_and_schema() -> None:
    blob = seal(KEY, PLAINTEXT, aad(0))
    for other in (
        aad(0, store="store-2"),
        aad(0, array="values"),
        chunk_aad("store-1", "keys", 0, "keystore/v2"),
        chunk_aad("store-1", "keys", (0, 0), "keystore/v1"),
    ):
        with pytest.raises(TamperedError):
            open_sealed(KEY, blob, other)


def test_wrong_key_fails() -> None:
    blob = seal(KEY, PLAINTEXT, aad(0))
    with pytest.raises(TamperedError, match="wrong key"):
        open_sealed(bytes(32), blob, aad(0))


def test_aad_is_unambiguous() -> None:
    assert chunk_aad("ab", "c", 1, "s") != chunk_aad("a", "bc", 1, "s")
    assert chunk_aad("a", "b", 1, "s") != chunk_aad("a", "b", 2, "s")
    assert chunk_aad("a", "b", (1, 2), "s") != chunk_aad("a", "b", (12,), "s")
    assert chunk_aad("a", "b", 5, "s") == chunk_aad("a", "b", (5,), "s")
    with pytest.raises(ValueError, match="non-negative"):
        chunk_aad("a", "b", -1, "s")


def test_bad_data_key_and_repr() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"short", PLAINTEXT, aad(0))
    assert KEY.hex() not in repr(ChunkCipher(KEY))
