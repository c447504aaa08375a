"""Envelope encryption of keystore data keys, behind a KMS-style provider.

A new keystore asks the provider for its data key, encrypts its rows with it and keeps
only the wrapped key in its metadata; a reader unwraps it. Only the provider holds the
keystore key (the master key), so rotating or revoking it never touches the rows.
``LocalKeyProvider`` holds it locally (from ``SecretSources.keystore_key``); a cloud KMS
would implement the same protocol.
"""

from __future__ import annotations

import hmac
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imambig.access.encryption import DATA_KEY_BYTES, ChunkCipher, TamperedError
from imambig.access.secrets import MIN_SECRET_BYTES, Secret, SecretError, Secrets, reveal


@runtime_checkable
class KeyProvider(Protocol):
    """A key service in the style of a cloud KMS.

    A new store asks for its data key, encrypts its chunks with it and keeps only
    ``wrap(data_key)`` in its metadata; a reader calls ``unwrap`` on that blob. Only the
    provider holds the master key, so rotating or revoking it never touches the chunks.
    """

    name: str

    def data_key(self, key_id: str) -> bytes:
        """A 32-byte data key for the store ``key_id``."""
        ...

    def wrap(self, data_key: bytes) -> bytes:
        """``data_key`` encrypted under the master key."""
        ...

    def unwrap(self, blob: bytes) -> bytes:
        """The data key inside ``blob``; raises if it was not wrapped by this master key."""
        ...


_WRAP_MAGIC = b"IMAMBIG-KW\x01"
_FINGERPRINT_BYTES = 8


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class LocalKeyProvider:
    """Envelope encryption with the keystore key held locally (env var or file).

    Data keys are derived from the master key and the store id, so rebuilding a store
    reproduces its key and its chunks byte for byte (a cloud KMS would draw a random
    key; the wrapped blob of the first build is then reused). Wrapping is AES-256-GCM
    with a deterministic nonce (:mod:`imambig.encryption`), for the same reason.
    """

    def __init__(self, keystore_key: Secret | bytes, name: str = "local") -> None:
        master = reveal(keystore_key)
        if len(master) < MIN_SECRET_BYTES:
            raise SecretError(
                f"keystore key is {len(master)} bytes; at least {MIN_SECRET_BYTES} "
                "are required"
            )
        self.name = name
        self._master = Secret(master)
        self._wrapper = ChunkCipher(_hkdf(master, b"imambig/local-kms/wrap/v1"))
        self._fingerprint = _hkdf(master, b"imambig/local-kms/fingerprint/v1")[:_FINGERPRINT_BYTES]

    @classmethod
    def from_secrets(cls, secrets: Secrets) -> LocalKeyProvider:
        """The provider of a run's keystore key."""
        return cls(secrets.keystore_key)

    @property
    def fingerprint(self) -> str:
        """Identifies the master key (safe to show; reveals nothing usable)."""
        return self._fingerprint.hex()

    def __repr__(self) -> str:
        return f"LocalKeyProvider(name={self.name!r}, fingerprint={self.fingerprint!r})"

    def data_key(self, key_id: str) -> bytes:
        if not key_id:
            raise ValueError("data key id must not be empty")
        return _hkdf(
            self._master.reveal(), b"imambig/local-kms/data-key/v1\0" + key_id.encode("utf-8")
        )

    def wrap(self, data_key: bytes) -> bytes:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        header = _WRAP_MAGIC + self._fingerprint
        return header + self._wrapper.seal(data_key, header)

    def unwrap(self, blob: bytes) -> bytes:
        header_len = len(_WRAP_MAGIC) + _FINGERPRINT_BYTES
        if not blob.startswith(_WRAP_MAGIC) or len(blob) < header_len:
            raise TamperedError("wrapped data key is malformed (bad magic or version)")
        fingerprint = blob[len(_WRAP_MAGIC) : header_len]
        if fingerprint != self._fingerprint:
            raise TamperedError(
                f"data key was wrapped under another master key (fingerprint "
                f"{fingerprint.hex()}; this provider's is {self.fingerprint})"
            )
        return self._wrapper.open(blob[header_len:], blob[:header_len], "wrapped data key")


class DataKeyProvider:
    """One keystore's data key, already unwrapped: what a worker that writes rows of
    that keystore is given instead of the keystore key (which unwraps every store's).

    It opens only the store whose wrapped key it was made for, and neither makes nor
    wraps keys, so it cannot create a keystore.
    """

    def __init__(self, data_key: Secret | bytes, wrapped: bytes, name: str = "data-key") -> None:
        key = reveal(data_key)
        if len(key) != DATA_KEY_BYTES:
            raise SecretError(f"data key must be {DATA_KEY_BYTES} bytes, got {len(key)}")
        self.name = name
        self._key = Secret(key)
        self._wrapped = bytes(wrapped)

    def __repr__(self) -> str:
        return f"DataKeyProvider(name={self.name!r})"

    def data_key(self, key_id: str) -> bytes:
        raise TypeError("a data-key provider opens its one keystore; it makes no keys")

    def wrap(self, data_key: bytes) -> bytes:
        raise TypeError("a data-key provider opens its one keystore; it wraps no keys")

    def unwrap(self, blob: bytes) -> bytes:
        if not hmac.compare_digest(bytes(blob), self._wrapped):
            raise TamperedError("this data key belongs to another keystore (its wrapped "
                                "key differs)")
        return self._key.reveal()
