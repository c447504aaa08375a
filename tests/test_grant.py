"""Identities and grants: only the intended identity opens a grant, only grants the
pinned owner key signed are accepted, and any change to a sealed grant is an error,
never garbage."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imambig.access import grant as G
from imambig.access.identity import (
    PUBLIC_PREFIX,
    Identity,
    IdentityError,
    load_identity,
    new_identity,
    parse_private_key,
    parse_public_key,
    save_identity,
)
from imambig.access.owner_key import OwnerKeyError, parse_owner_key, public_text, signing_key
from imambig.access.secrets import InsecureSecretFileWarning
from imambig.mechanism.keys import encode_key

OWNER = signing_key(bytes(range(32)))  # a fixed test owner; never use for real grants


def sample_grant(**change) -> G.Grant:
    rng = np.random.default_rng(0)
    items = []
    for n, item in enumerate(("000001.jpg", "000002.jpg", "ünïcode")):
        mask = np.zeros((20, 256), bool)
        np.put_along_axis(mask, np.argsort(rng.random((20, 256)), axis=1)[:, :128], True, axis=1)
        items.append(G.GrantItem(item, f"{n:032x}", n, bytes([n]) * 32, encode_key(mask)))
    fields = dict(model_id="0123456789abcdef", store_id="ab" * 16, version="v-0123456789abcdef-k256-d2",
                  store_url="s3://bucket/public/store.zarr", items=tuple(items),
                  created_at="2024-01-01T00:00:00+00:00", expires_at="2099-01-01T00:00:00+00:00",
                  note="study 42")
    return G.Grant(**{**fields, **change})


def sealed(grant: G.Grant | None = None, to: Identity | None = None,
           signer: Ed25519PrivateKey = OWNER) -> tuple[bytes, Identity]:
    to = to or new_identity()
    return G.seal_grant(grant or sample_grant(), signer, to.public_text()), to


# ---------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------


def test_identity_text_round_trip() -> None:
    identity = new_identity()
    public = identity.public_text()
    assert public.startswith(PUBLIC_PREFIX) and len(public) == len(PUBLIC_PREFIX) + 43
    assert parse_public_key(public).public_bytes_raw() == identity.public_bytes()
    restored = parse_private_key(identity.private_text())
    assert restored.public_bytes() == identity.public_bytes()
    assert identity.private_text() not in repr(identity)
    assert identity.private_text().split(":")[1] not in str(identity)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ssh-ed25519 AAAA", "not an imambig public key"),
        (PUBLIC_PREFIX + "!!!!", "base64"),
        (PUBLIC_PREFIX + "AAAA", "32 bytes"),
        ("imambig-secret-v1:" + "A" * 43, "private key"),
    ],
)
def test_bad_public_keys(text: str, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        parse_public_key(text)


def test_save_and_load_identity(tmp_path: Path) -> None:
    identity = new_identity()
    path = tmp_path / "me.key"
    save_identity(identity, path)
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o600
    assert load_identity(path).public_bytes() == identity.public_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_identity(new_identity(), path)
    assert load_identity(path).public_bytes() == identity.public_bytes()
    other = new_identity()
    save_identity(other, path, overwrite=True)
    assert load_identity(path).public_bytes() == other.public_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.key"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_load_identity_warns_on_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    save_identity(new_identity(), path)
    path.chmod(0o644)
    with pytest.warns(InsecureSecretFileWarning):
        load_identity(path)


def test_load_identity_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("# nothing here\n")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="exactly one"):
        load_identity(path)
    path.write_text("imambig-secret-v1:AAAA\n")
    with pytest.raises(IdentityError, match="32 bytes"):
        load_identity(path)


# ---------------------------------------------------------------------------
# Grants
# ---------------------------------------------------------------------------


def test_grant_body_is_stable() -> None:
    grant = sample_grant()
    data = grant.to_bytes()
    assert data == sample_grant().to_bytes()
    back = G.Grant.from_bytes(data)
    assert back.to_bytes() == data and back.keys == grant.keys
    assert all(key.hex() not in repr(grant) for key in grant.keys.values())
    assert "items=3" in repr(grant)


def test_seal_and_open() -> None:
    blob, alice = sealed()
    grant = G.open_grant(blob, alice, public_text(OWNER))
    assert grant.keys == sample_grant().keys and grant.version == sample_grant().version
    assert grant.recipient == alice.public_text() and grant.issuer == public_text(OWNER)
    assert G.grant_recipient(blob).public_bytes_raw() == alice.public_bytes()
    # A fresh ephemeral key per grant: sealing twice never repeats bytes.
    assert G.seal_grant(sample_grant(), OWNER, alice.public_key) != blob


def test_wrong_identity_cannot_open() -> None:
    blob, _ = sealed()
    with pytest.raises(G.GrantError, match="sealed for another identity"):
        G.open_grant(blob, new_identity(), public_text(OWNER))


def test_a_stranger_cannot_mint_a_grant() -> None:
    """Knowing a user's public key is not enough: the grant must carry the signature of
    the owner key the user pinned (today any sealed grant opens)."""
    forged, alice = sealed(sample_grant(store_url="s3://attacker/store"),
                           signer=Ed25519PrivateKey.generate())
    with pytest.raises(G.GrantError, match="not signed by the owner key you pinned"):
        G.open_grant(forged, alice, public_text(OWNER))


def test_a_recipient_cannot_forward_a_grant() -> None:
    """Re-sealing the signed body to someone else fails: the body names its recipient."""
    blob, alice = sealed()
    bob = new_identity()
    payload = _payload(blob, alice)
    eph = X25519PrivateKey.generate()
    header = G.MAGIC + eph.public_key().public_bytes_raw() + bob.public_bytes()
    key = G._aead_key(eph.exchange(bob.public_key), header[len(G.MAGIC):len(G.MAGIC) + 32],
                      bob.public_bytes())
    nonce = os.urandom(12)
    forwarded = header + nonce + AESGCM(key).encrypt(nonce, payload, header)
    with pytest.raises(G.GrantError, match="another recipient"):
        G.open_grant(forwarded, bob, public_text(OWNER))


def _payload(blob: bytes, identity: Identity) -> bytes:
    eph = X25519PublicKey.from_public_bytes(blob[len(G.MAGIC) : len(G.MAGIC) + 32])
    key = G._aead_key(identity.private_key.exchange(eph), blob[len(G.MAGIC):len(G.MAGIC) + 32],
                      identity.public_bytes())
    return AESGCM(key).decrypt(blob[G.HEADER_BYTES : G.HEADER_BYTES + 12],
                               blob[G.HEADER_BYTES + 12 :], blob[: G.HEADER_BYTES])


def test_expired_grants_are_refused() -> None:
    blob, alice = sealed(sample_grant(expires_at="2024-06-01T00:00:00+00:00"))
    with pytest.raises(G.GrantError, match="expired at 2024-06-01"):
        G.open_grant(blob, alice, public_text(OWNER))
    then = datetime(2024, 5, 1, tzinfo=UTC)
    assert G.open_grant(blob, alice, public_text(OWNER), now=then).keys == sample_grant().keys


def test_substituted_recipient_fails_authentication() -> None:
    # Rewriting the header to name another identity does not let it decrypt.
    thief = new_identity()
    blob = bytearray(sealed()[0])
    blob[len(G.MAGIC) + 32 : G.HEADER_BYTES] = thief.public_bytes()
    with pytest.raises(G.GrantError, match="failed authentication"):
        G.open_grant(bytes(blob), thief, public_text(OWNER))


def test_every_flipped_byte_is_an_error() -> None:
    blob, identity = sealed(sample_grant(items=sample_grant().items[:1]))
    magic, eph = len(G.MAGIC), len(G.MAGIC) + 32
    nonce_end = G.HEADER_BYTES + 12
    regions = {
        "magic": (range(0, magic), "not an imambig grant|format 1"),
        "ephemeral key": (range(magic, eph), "failed authentication"),
        "recipient key": (range(eph, G.HEADER_BYTES), "another identity"),
        "nonce": (range(G.HEADER_BYTES, nonce_end), "failed authentication"),
        "ciphertext": (range(nonce_end, len(blob) - 16), "failed authentication"),
        "tag": (range(len(blob) - 16, len(blob)), "failed authentication"),
    }
    assert sum(len(r) for r, _ in regions.values()) == len(blob)
    for name, (positions, message) in regions.items():
        assert len(positions) > 0, name
        for position in positions[:: max(1, len(positions) // 64)]:
            for flip in (0x01, 0x80):
                bad = bytearray(blob)
                bad[position] ^= flip
                with pytest.raises(G.GrantError, match=message):
                    G.open_grant(bytes(bad), identity, public_text(OWNER))


def test_truncated_and_oversized_grants_are_errors() -> None:
    blob, identity = sealed()
    for length in (0, 5, len(G.MAGIC), G.HEADER_BYTES, G.HEADER_BYTES + 20, len(blob) - 1):
        with pytest.raises(G.GrantError, match=r"truncated|failed authentication"):
            G.open_grant(blob[:length], identity, public_text(OWNER))
    with pytest.raises(G.GrantError, match="not an imambig grant"):
        G.open_grant(b"PK\x03\x04" + blob[4:], identity, public_text(OWNER))
    with pytest.raises(G.GrantError, match="over the"):
        G.open_grant(blob + bytes(G.MAX_GRANT_BYTES), identity, public_text(OWNER))
    with pytest.raises(G.GrantError, match="format 1"):
        G.open_grant(G.LEGACY_MAGIC + blob[len(G.MAGIC):], identity, public_text(OWNER))


def test_malformed_bodies_are_errors() -> None:
    with pytest.raises(G.GrantError, match="not valid JSON"):
        G.Grant.from_bytes(b"\xff\xfe")
    with pytest.raises(G.GrantError, match="format"):
        G.Grant.from_bytes(b'{"format": "other"}')
    with pytest.raises(G.GrantError, match="items"):
        G.Grant.from_bytes(b'{"format": "imambig-grant/2", "items": []}')
    good = json.loads(sample_grant().to_bytes())
    for field, value, message in (("model_id", "../x", "model_id"), ("expires_at", "soon", "ISO"),
                                  ("store_id", 7, "store_id")):
        with pytest.raises(G.GrantError, match=message):
            G.Grant.from_bytes(json.dumps({**good, field: value}).encode())
    item = good["items"][0]
    for change, message in (({"index": -1}, "position"), ({"key": "!!"}, "base64"),
                            ({"name": ""}, "empty name"), ({"record": "00"}, "record")):
        doc = {**good, "items": [{**item, **change}]}
        with pytest.raises(G.GrantError, match=message):
            G.Grant.from_bytes(json.dumps(doc).encode())


def test_low_order_recipient_is_refused() -> None:
    with pytest.raises(G.GrantError, match="invalid"):
        G.seal_grant(sample_grant(), OWNER, X25519PublicKey.from_public_bytes(bytes(32)))


def test_owner_keys_parse_strictly(tmp_path: Path) -> None:
    text = public_text(OWNER)
    assert parse_owner_key(text).public_bytes_raw() == OWNER.public_key().public_bytes_raw()
    (tmp_path / "owner.pub").write_text(text + "\n")
    assert public_text(parse_owner_key(str(tmp_path / "owner.pub"))) == text
    for bad in ("imambig-pub-v1:" + text.split(":")[1], text[:-1], text + "A", "x"):
        with pytest.raises(OwnerKeyError):
            parse_owner_key(bad)
