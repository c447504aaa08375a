"""Grants: the keys of chosen items, signed by the owner and sealed to one user.

Sealed layout (format 2)::

    header  = b"IMAMBIG-GRANT\\x02" || ephemeral public key (32) || recipient public key (32)
    blob    = header || nonce (12) || AES-256-GCM(payload, aad=header) (ciphertext || tag)
    payload = body length (u32, big-endian) || body || Ed25519 signature (64)

The AES key is HKDF-SHA256 of the X25519 shared secret between a fresh ephemeral key and
the recipient (salt = both public keys, info = ``imambig/grant/v2``); each grant has its
own ephemeral key, hence its own AES key, so a random nonce is safe. The header is
authenticated. The body (canonical JSON) names the issuer (the owner's signing key), the
recipient, the model, the store (id, version, URL), an expiry, and per item its name,
opaque id, position, public-record digest and key; the owner signs it
(``imambig/grant-signature/v2 NUL || body``). Knowing a user's public key is thus not
enough to make a grant they accept: it must verify under the owner key they pinned, name
them (so a recipient cannot re-seal it to someone else), and not have expired.

Grants come from outside: parsing is bounded (size, item count, name length) and every
failure is a :class:`GrantError` that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imambig.access import owner_key
from imambig.access.identity import Identity, fingerprint, parse_public_key, public_text
from imambig.errors import FormatError, ImambigError
from imambig.untrusted import parse_json, read_file

MAGIC = b"IMAMBIG-GRANT\x02"
LEGACY_MAGIC = b"IMAMBIG-GRANT\x01"
BODY_FORMAT = "imambig-grant/2"
_HKDF_INFO = b"imambig/grant/v2"
_SIGNED = b"imambig/grant-signature/v2\0"
_PUB = 32
HEADER_BYTES = len(MAGIC) + 2 * _PUB
_NONCE = 12
_TAG = 16
_SIG = 64
MAX_GRANT_BYTES = 64 << 20  # some 90,000 paper-size keys
MAX_ITEMS = 1 << 17
MAX_NAME_CHARS = 1024
MAX_KEY_BYTES = (64 << 10) + 7  # imambig.mechanism.keys' own bound
DEFAULT_VALID_DAYS = 30
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MODEL_ID = re.compile(r"[0-9a-f]{16}")
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,200}")


class GrantError(ImambigError):
    """A grant cannot be opened, verified or read."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, repr=False)
class GrantItem:
    """One granted item."""

    name: str  # the owner's name for it (its source path); names the revealed file
    item_id: str  # its opaque id in the public store
    index: int  # its position in the public store
    record: bytes  # SHA-256 of its public record: reveal refuses any other record
    key: bytes  # imambig.mechanism.keys format


@dataclass(frozen=True, repr=False)
class Grant:
    """What a user receives: item keys for one version of one model's public store."""

    model_id: str
    store_id: str
    version: str
    store_url: str
    items: tuple[GrantItem, ...]
    created_at: str = field(default_factory=lambda: _iso(_now()))  # ISO 8601, UTC
    expires_at: str = field(
        default_factory=lambda: _iso(_now() + timedelta(days=DEFAULT_VALID_DAYS)))
    note: str = ""  # free text from the issuer
    issuer: str = ""  # the owner's public key (imambig-owner-v1:...), set when sealed
    recipient: str = ""  # the user's public key (imambig-pub-v1:...), set when sealed
    # Lower-fidelity grants: the id of the grant decoder they are revealed with
    # (imambig.stages.grant_decoder); empty for full keys or where the owner has none.
    decoder_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        names = [i.name for i in self.items]
        if len(set(names)) != len(names) or len({i.item_id for i in self.items}) != len(names):
            raise GrantError("a grant names each item once")

    @property
    def keys(self) -> dict[str, bytes]:
        """Item name -> key."""
        return {i.name: i.key for i in self.items}

    def __repr__(self) -> str:
        # Keys are secret: show how many, never which.
        return (f"Grant(model_id={self.model_id!r}, version={self.version!r}, "
                f"store_url={self.store_url!r}, items={len(self.items)}, "
                f"expires_at={self.expires_at!r})")

    __str__ = __repr__

    def to_bytes(self) -> bytes:
        """Canonical JSON: equal grants serialize to equal bytes (what is signed)."""
        doc = {
            "format": BODY_FORMAT, "issuer": self.issuer, "recipient": self.recipient,
            "model_id": self.model_id, "store_id": self.store_id, "version": self.version,
            "store_url": self.store_url, "created_at": self.created_at,
            "expires_at": self.expires_at, "note": self.note,
            "items": [{"name": i.name, "id": i.item_id, "index": i.index,
                       "record": i.record.hex(), "key": base64.b64encode(i.key).decode()}
                      for i in self.items],
        }
        if self.decoder_id:  # absent otherwise: earlier grants keep their signed bytes
            doc["decoder_id"] = self.decoder_id
        return json.dumps(doc, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Grant:
        """Parse a grant body strictly; :class:`GrantError` naming the first problem."""
        try:
            doc: Any = parse_json(data, "grant body", MAX_GRANT_BYTES)
        except FormatError as exc:  # bad UTF-8 or syntax, nested too deep, oversized
            raise GrantError(str(exc)) from None
        if not isinstance(doc, dict) or doc.get("format") != BODY_FORMAT:
            raise GrantError(f"grant body is not in the {BODY_FORMAT} format")
        items = doc.get("items")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
            raise GrantError(f"a grant holds 1..{MAX_ITEMS} items")
        fields = {name: _text(doc, name, pattern) for name, pattern in (
            ("model_id", _MODEL_ID), ("store_id", _HEX32), ("version", _VERSION),
            ("store_url", None), ("note", None), ("issuer", None), ("recipient", None))}
        for name in ("created_at", "expires_at"):
            _time(_text(doc, name, None), name)
            fields[name] = doc[name]
        if "decoder_id" in doc:
            fields["decoder_id"] = _text(doc, "decoder_id", _MODEL_ID)
        return cls(items=tuple(_item(i, n) for n, i in enumerate(items)), **fields)


def _text(doc: dict[str, Any], name: str, pattern: re.Pattern[str] | None,
          limit: int = 4096) -> str:
    v = doc.get(name)
    if not isinstance(v, str) or len(v) > limit or (pattern and not pattern.fullmatch(v)):
        raise GrantError(f"grant field {name!r} is missing or malformed")
    return v


def _time(text: str, name: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise GrantError(f"grant field {name!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise GrantError(f"grant field {name!r} has no time zone")
    return t


def _item(doc: Any, n: int) -> GrantItem:
    if not isinstance(doc, dict):
        raise GrantError(f"grant item {n} is not an object")
    name = _text(doc, "name", None, MAX_NAME_CHARS)
    if not name or "\0" in name:
        raise GrantError(f"grant item {n} has an empty name or one with NUL")
    index, key = doc.get("index"), doc.get("key")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 1 << 31:
        raise GrantError(f"grant item {name!r}: position is malformed")
    if not isinstance(key, str) or len(key) > 2 * MAX_KEY_BYTES:
        raise GrantError(f"grant item {name!r}: key is malformed")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise GrantError(f"grant item {name!r}: key is not base64") from None
    return GrantItem(name, _text(doc, "id", _HEX32), index,
                     bytes.fromhex(_text(doc, "record", _HEX64)), raw)


def _aead_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_HKDF_INFO
    ).derive(shared)


def seal_grant(grant: Grant, signer: Ed25519PrivateKey,
               recipient: X25519PublicKey | str) -> bytes:
    """Sign ``grant`` as the owner of ``signer`` and encrypt it so only the holder of
    ``recipient``'s private key can open it."""
    if isinstance(recipient, str):
        recipient = parse_public_key(recipient)
    grant = dataclasses.replace(grant, issuer=owner_key.public_text(signer),
                                recipient=public_text(recipient))
    body = grant.to_bytes()
    payload = struct.pack(">I", len(body)) + body + signer.sign(_SIGNED + body)
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
    return header + nonce + AESGCM(_aead_key(shared, eph_pub, recipient_pub)).encrypt(
        nonce, payload, header)


def grant_recipient(blob: bytes) -> X25519PublicKey:
    """The public key a grant was sealed for (read from its header, not authenticated)."""
    if len(blob) < HEADER_BYTES or not blob.startswith(MAGIC):
        raise GrantError("not an imambig grant (unknown format or version)")
    return X25519PublicKey.from_public_bytes(blob[len(MAGIC) + _PUB : HEADER_BYTES])


def read_grant(path: str | os.PathLike[str]) -> bytes:
    """A grant file's bytes, refused past ``MAX_GRANT_BYTES`` after reading at most one
    byte more (a file's size says nothing of a pipe or a device)."""
    try:
        return read_file(path, MAX_GRANT_BYTES, "grant")
    except FormatError as exc:
        raise GrantError(str(exc)) from None


def _check_envelope(blob: bytes) -> None:
    if len(blob) > MAX_GRANT_BYTES:
        raise GrantError(f"grant is {len(blob):,} bytes, over the {MAX_GRANT_BYTES:,}-byte "
                         "limit")
    if blob.startswith(LEGACY_MAGIC):
        raise GrantError("this is a grant of format 1 (unsigned, no expiry), which is no "
                         "longer accepted; ask the owner for a new grant")
    if not blob.startswith(MAGIC):
        if MAGIC.startswith(blob):
            raise GrantError(f"grant is truncated ({len(blob)} bytes)")
        raise GrantError("not an imambig grant (unknown format or version)")
    if len(blob) < HEADER_BYTES + _NONCE + _TAG:
        raise GrantError(f"grant is truncated ({len(blob)} bytes)")


def open_grant(blob: bytes, identity: Identity, owner: Ed25519PublicKey | str,
               now: datetime | None = None) -> Grant:
    """Decrypt, verify and parse a grant sealed for ``identity`` and signed by ``owner``
    (the owner public key the user pinned); :class:`GrantError` otherwise."""
    _check_envelope(blob)
    if isinstance(owner, str):
        owner = owner_key.parse_owner_key(owner)
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
        payload = AESGCM(_aead_key(shared, eph_pub, recipient_pub)).decrypt(
            blob[HEADER_BYTES : HEADER_BYTES + _NONCE], blob[HEADER_BYTES + _NONCE :],
            blob[:HEADER_BYTES])
    except (InvalidTag, ValueError):
        raise GrantError("grant failed authentication: tampered or truncated") from None
    (size,) = struct.unpack_from(">I", payload) if len(payload) >= 4 else (-1,)
    if size < 0 or len(payload) != 4 + size + _SIG:
        raise GrantError("grant payload is malformed (body and signature lengths)")
    body, signature = payload[4 : 4 + size], payload[4 + size :]
    if not owner_key.verify(owner, signature, _SIGNED + body):
        raise GrantError(f"grant is not signed by the owner key you pinned "
                         f"({owner_key.public_text(owner)}): forged, or from another owner")
    grant = Grant.from_bytes(body)
    if grant.issuer != owner_key.public_text(owner) or grant.recipient != identity.public_text():
        raise GrantError("grant was signed for another recipient or issuer (forwarded?)")
    expires = _time(grant.expires_at, "expires_at")
    if (now or _now()) > expires:
        raise GrantError(f"grant expired at {grant.expires_at}; ask the owner for a new one")
    return grant
