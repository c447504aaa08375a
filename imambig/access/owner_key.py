"""The owner's signing key: grants are signed with it (Ed25519), users pin its public key.

The private key is derived from an owner secret like the others (``SecretSources.
signing_key``: env, file or Prefect block; at least 32 bytes), by HKDF with its own
label, so it is kept, rotated and resolved exactly like them. Text form of the public
key, shared with every user (URL-safe base64 of the 32 raw bytes, no padding)::

    imambig-owner-v1:<public key>
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imambig.access.secrets import MIN_SECRET_BYTES, Secret, SecretError, reveal
from imambig.errors import FormatError
from imambig.untrusted import read_file

PUBLIC_PREFIX = "imambig-owner-v1:"
OWNER_KEY_FILE_LIMIT = 4096  # one line of 60 characters, perhaps with comments
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]{43}")


class OwnerKeyError(FormatError):
    """An owner public key is malformed."""


def signing_key(secret: Secret | bytes) -> Ed25519PrivateKey:
    """The Ed25519 key of an owner signing secret."""
    raw = reveal(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise SecretError(f"signing key secret is {len(raw)} bytes; at least "
                          f"{MIN_SECRET_BYTES} are required")
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"imambig/owner-signing-key/v1").derive(raw)
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_text(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return PUBLIC_PREFIX + base64.urlsafe_b64encode(public.public_bytes_raw()).decode().rstrip("=")


def parse_owner_key(text: str) -> Ed25519PublicKey:
    """The key in ``imambig-owner-v1:...`` text, or in a file holding that text."""
    text = text.strip()
    if not text.startswith(PUBLIC_PREFIX) and len(text) < 4096 and Path(text).is_file():
        try:
            raw = read_file(text, OWNER_KEY_FILE_LIMIT, "owner public key file")
        except FormatError as exc:  # over the limit: not a key file
            raise OwnerKeyError(str(exc)) from None
        text = raw.decode("ascii", errors="replace").strip()
    if not text.startswith(PUBLIC_PREFIX):
        raise OwnerKeyError(f"not an owner public key: expected text starting with "
                            f"{PUBLIC_PREFIX!r} (or a file holding it)")
    body = text[len(PUBLIC_PREFIX) :]
    if not _URLSAFE_B64.fullmatch(body):
        raise OwnerKeyError("owner public key must be 43 URL-safe base64 characters")
    try:
        return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(body + "="))
    except (binascii.Error, ValueError):
        raise OwnerKeyError("owner public key is not a valid Ed25519 key") from None


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True
