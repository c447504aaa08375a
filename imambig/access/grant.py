"""Grants: the keys of chosen items, sealed to one user's X25519 public key.

Sealed layout::

    header = b"IMAMBIG-GRANT\\x01" || ephemeral public key (32) || recipient public key (32)
    blob   = header || nonce (12) || AES-256-GCM(payload, aad=header) (ciphertext || tag)

The AES key is HKDF-SHA256 of the X25519 shared secret between a fresh ephemeral key and
the recipient (salt = both public keys, info = ``imambig/grant/v1``). Each grant has its
own ephemeral key, hence its own AES key, so a random nonce is safe. The header is
authenticated: changing either public key or the version makes the grant fail to open.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imambig.access.identity import Identity, fingerprint, parse_public_key

MAGIC = b"IMAMBIG-GRANT\x01"
PAYLOAD_FORMAT = "imambig-grant/v1"
_HKDF_INFO = b"imambig/grant/v1"
_PUB = 32
HEADER_BYTES = len(MAGIC) + 2 * _PUB
_NONCE = 12
_TAG = 16


class GrantError(ValueError):
    """A grant cannot be opened or read."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, repr=False)
class Grant:
    """What a user receives: item keys for one model's public store."""

    model_id: str
    store_url: str
    keys: Mapping[str, bytes]  # item id -> key bytes (imambig.mechanism.keys format)
    created_at: str = field(default_factory=_now)  # ISO 8601, UTC
    note: str = ""  # free text from the issuer

    def __post_init__(self) -> None:
        keys = dict(self.keys)
        for item, key in keys.items():
            if not isinstance(item, str) or not isinstance(key, bytes | bytearray):
                raise TypeError("grant keys must map item ids (str) to key bytes")
        object.__setattr__(self, "keys", {item: bytes(key) for item, key in keys.items()})

    def __repr__(self) -> str:
        # Keys are secret: show how many, never which.
        return (
            f"Grant(model_id={self.model_id!r}, store_url={self.store_url!r}, "
            f"items={len(self.keys)}, created_at={self.created_at!r})"
        )

    __str__ = __repr__

    def to_bytes(self) -> bytes:
        """Canonical JSON: equal grants serialize to equal bytes."""
        doc = {
            "format": PAYLOAD_FORMAT,
            "model_id": self.model_id,
            "store_url": self.store_url,
            "created_at": self.created_at,
            "note": self.note,
            "keys": {
                item: base64.b64encode(key).decode("ascii") for item, key in self.keys.items()
            },
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Grant:
        try:
            doc: Any = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GrantError(f"grant payload is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != PAYLOAD_FORMAT:
            raise GrantError(f"grant payload is not in the {PAYLOAD_FORMAT} format")
        try:
            keys = {
                str(item): base64.b64decode(text, validate=True)
                for item, text in doc["keys"].items()
            }
            return cls(
                model_id=str(doc["model_id"]),
                store_url=str(doc["store_url"]),
                keys=keys,
                created_at=str(doc["created_at"]),
                note=str(doc.get("note", "")),
            )
        except (KeyError, AttributeError, TypeError, binascii.Error) as exc:
            raise GrantError(f"grant payload is incomplete or malformed ({exc!r})") from None


def _aead_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_HKDF_INFO
    ).derive(shared)


def seal_grant(grant: Grant, recipient: X25519PublicKey | str) -> bytes:
    """Encrypt ``grant`` so only the holder of ``recipient``'s private key can open it."""
    if isinstance(recipient, str):
        recipient = parse_public_key(recipient)
    recipient_pub = recipient.public_bytes_raw()
    ephemeral = X25519PrivateKey.generate()
    eph_pub = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        # Low-order points give an all-zero secret that anyone could compute.
        raise GrantError("recipient public key is invalid (low-order point)") from None
    header = MAGIC + eph_pub + recipient_pub
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(_aead_key(shared, eph_pub, recipient_pub)).encrypt(
        nonce, grant.to_bytes(), header
    )
    return header + nonce + sealed


def grant_recipient(blob: bytes) -> X25519PublicKey:
    """The public key a grant was sealed for (read from its header, not authenticated)."""
    if len(blob) < HEADER_BYTES or not blob.startswith(MAGIC):
        raise GrantError("not an imambig grant (unknown format or version)")
    return X25519PublicKey.from_public_bytes(blob[len(MAGIC) + _PUB : HEADER_BYTES])


def open_grant(blob: bytes, identity: Identity) -> Grant:
    """Decrypt and parse a grant sealed for ``identity``; :class:`GrantError` otherwise."""
    if not blob.startswith(MAGIC):
        if MAGIC.startswith(blob):
            raise GrantError(f"grant is truncated ({len(blob)} bytes)")
        raise GrantError("not an imambig grant (unknown format or version)")
    if len(blob) < HEADER_BYTES + _NONCE + _TAG:
        raise GrantError(f"grant is truncated ({len(blob)} bytes)")
    eph_pub = blob[len(MAGIC) : len(MAGIC) + _PUB]
    recipient_pub = blob[len(MAGIC) + _PUB : HEADER_BYTES]
    if recipient_pub != identity.public_bytes():
        theirs = fingerprint(X25519PublicKey.from_public_bytes(recipient_pub))
        raise GrantError(
            f"this grant was sealed for another identity ({theirs}), not yours "
            f"({identity.fingerprint()})"
        )
    try:
        shared = identity.private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _aead_key(shared, eph_pub, recipient_pub)
        payload = AESGCM(key).decrypt(
            blob[HEADER_BYTES : HEADER_BYTES + _NONCE],
            blob[HEADER_BYTES + _NONCE :],
            blob[:HEADER_BYTES],
        )
    except (InvalidTag, ValueError):
        raise GrantError("grant failed authentication: tampered or truncated") from None
    return Grant.from_bytes(payload)
