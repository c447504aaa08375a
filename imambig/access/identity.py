"""X25519 identities of data users: grants are sealed to their public keys.

Text forms (URL-safe base64 of the 32 raw bytes, no padding)::

    imambig-pub-v1:<public key>        shared with the data owner
    imambig-secret-v1:<private key>    kept in a 0600 file by the user

An identity file holds the private text plus comment lines (``#``) naming the public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from imambig.access.secrets import check_private_file
from imambig.errors import FormatError
from imambig.untrusted import read_file

PUBLIC_PREFIX = "imambig-pub-v1:"
PRIVATE_PREFIX = "imambig-secret-v1:"
KEY_BYTES = 32
MAX_IDENTITY_FILE_BYTES = 64 << 10  # a few hundred bytes in practice
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class IdentityError(FormatError):
    """A public key, private key or identity file is malformed."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    # urlsafe_b64decode silently drops characters outside the alphabet: check first.
    if not _URLSAFE_B64.fullmatch(text):
        raise IdentityError(f"{what} is not valid base64")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise IdentityError(f"{what} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise IdentityError(f"{what} must encode {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def public_text(public: X25519PublicKey) -> str:
    return PUBLIC_PREFIX + _b64(public.public_bytes_raw())


def fingerprint(public: X25519PublicKey) -> str:
    """Short id of a public key for messages and listings."""
    return hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]


def parse_public_key(text: str) -> X25519PublicKey:
    """The public key in ``imambig-pub-v1:...`` text."""
    text = text.strip()
    if text.startswith(PRIVATE_PREFIX):
        raise IdentityError(
            "this is a private key: share the public key (imambig-pub-v1:...) instead"
        )
    if not text.startswith(PUBLIC_PREFIX):
        raise IdentityError(
            f"not an imambig public key: expected text starting with {PUBLIC_PREFIX!r}"
        )
    raw = _unb64(text[len(PUBLIC_PREFIX) :], "public key")
    return X25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, repr=False)
class Identity:
    """A user's X25519 key pair."""

    private_key: X25519PrivateKey

    @property
    def public_key(self) -> X25519PublicKey:
        return self.private_key.public_key()

    def public_bytes(self) -> bytes:
        return self.public_key.public_bytes_raw()

    def public_text(self) -> str:
        return public_text(self.public_key)

    def private_text(self) -> str:
        return PRIVATE_PREFIX + _b64(self.private_key.private_bytes_raw())

    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"Identity(public={self.public_text()!r})"

    __str__ = __repr__


def new_identity() -> Identity:
    return Identity(X25519PrivateKey.generate())


def parse_private_key(text: str) -> Identity:
    """The identity in ``imambig-secret-v1:...`` text (never echoed in errors)."""
    text = text.strip()
    if not text.startswith(PRIVATE_PREFIX):
        raise IdentityError(f"not an imambig private key: expected {PRIVATE_PREFIX!r} prefix")
    raw = _unb64(text[len(PRIVATE_PREFIX) :], "private key")
    return Identity(X25519PrivateKey.from_private_bytes(raw))


def save_identity(
    identity: Identity, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write the identity to a new 0600 file (refuses to replace one unless told)."""
    path = Path(path)
    content = (
        "# imambig identity: keep this file private\n"
        f"# public key: {identity.public_text()}\n"
        f"{identity.private_text()}\n"
    ).encode("ascii")
    if not overwrite:
        # O_EXCL: an existing identity is never replaced, even by a concurrent writer.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise FileExistsError(
                f"identity file {path} exists; pass overwrite=True to replace it"
            ) from None
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        return
    # Write beside the target, then rename: a crash never leaves a half-written identity.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_identity(path: str | os.PathLike[str], *, strict: bool = False) -> Identity:
    """Read an identity file; warns (``strict``: refuses) if others can read it."""
    check_private_file(path, strict=strict)
    try:
        raw = read_file(path, MAX_IDENTITY_FILE_BYTES, "identity file")
    except FormatError:
        raise IdentityError(f"identity file {os.fspath(path)} is over "
                            f"{MAX_IDENTITY_FILE_BYTES} bytes: not an identity file") from None
    lines = [
        line.strip()
        for line in raw.decode("ascii", errors="replace").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) != 1:
        raise IdentityError(
            f"identity file {os.fspath(path)} must hold exactly one private key line, "
            f"found {len(lines)}"
        )
    try:
        return parse_private_key(lines[0])
    except IdentityError as exc:
        raise IdentityError(f"identity file {os.fspath(path)}: {exc}") from None
