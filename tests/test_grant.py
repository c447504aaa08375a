"""Identities and grants: only the intended identity opens a grant, and any change to a
sealed grant is an error, never garbage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from imambig.access import grant as G
from imambig.access.identity import (
    PUBLIC_PREFIX,
    IdentityError,
    load_identity,
    new_identity,
    parse_private_key,
    parse_public_key,
    save_identity,
)
from imambig.access.secrets import InsecureSecretFileWarning
from imambig.mechanism.keys import encode_key


def sample_grant() -> G.Grant:
    rng = np.random.default_rng(0)
    keys = {}
    for item in ("000001.jpg", "000002.jpg", "ünïcode"):
        mask = np.zeros((20, 256), bool)
        np.put_along_axis(mask, np.argsort(rng.random((20, 256)), axis=1)[:, :128], True, axis=1)
        keys[item] = encode_key(mask)
    return G.Grant(
        model_id="0123456789abcdef",
        store_url="s3://bucket/public/store.zarr",
        keys=keys,
        created_at="2024-01-01T00:00:00+00:00",
        note="study 42",
    )


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


def test_grant_payload_is_stable() -> None:
    grant = sample_grant()
    data = grant.to_bytes()
    assert data == sample_grant().to_bytes()
    back = G.Grant.from_bytes(data)
    assert back == grant and back.to_bytes() == data
    assert all(key.hex() not in repr(grant) for key in grant.keys.values())
    assert "items=3" in repr(grant)


def test_seal_and_open() -> None:
    identity, grant = new_identity(), sample_grant()
    blob = G.seal_grant(grant, identity.public_text())
    assert G.open_grant(blob, identity) == grant
    assert G.grant_recipient(blob).public_bytes_raw() == identity.public_bytes()
    # A fresh ephemeral key per grant: sealing twice never repeats bytes.
    assert G.seal_grant(grant, identity.public_key) != blob


def test_wrong_identity_cannot_open() -> None:
    blob = G.seal_grant(sample_grant(), new_identity().public_key)
    with pytest.raises(G.GrantError, match="sealed for another identity"):
        G.open_grant(blob, new_identity())


def test_substituted_recipient_fails_authentication() -> None:
    # Rewriting the header to name another identity does not let it decrypt.
    thief = new_identity()
    blob = bytearray(G.seal_grant(sample_grant(), new_identity().public_key))
    blob[len(G.MAGIC) + 32 : G.HEADER_BYTES] = thief.public_bytes()
    with pytest.raises(G.GrantError, match="failed authentication"):
        G.open_grant(bytes(blob), thief)


def test_every_flipped_byte_is_an_error() -> None:
    identity = new_identity()
    grant = G.Grant("m", "file:///s", {"a": b"\x01" * 40}, created_at="2024-01-01T00:00:00")
    blob = G.seal_grant(grant, identity.public_key)
    magic, eph = len(G.MAGIC), len(G.MAGIC) + 32
    nonce_end = G.HEADER_BYTES + 12
    regions = {
        "magic": (range(0, magic), "not an imambig grant"),
        "ephemeral key": (range(magic, eph), "failed authentication"),
        "recipient key": (range(eph, G.HEADER_BYTES), "another identity"),
        "nonce": (range(G.HEADER_BYTES, nonce_end), "failed authentication"),
        "ciphertext": (range(nonce_end, len(blob) - 16), "failed authentication"),
        "tag": (range(len(blob) - 16, len(blob)), "failed authentication"),
    }
    assert sum(len(r) for r, _ in regions.values()) == len(blob)
    for name, (positions, message) in regions.items():
        assert len(positions) > 0, name
        for position in positions:
            for flip in (0x01, 0x80):
                bad = bytearray(blob)
                bad[position] ^= flip
                with pytest.raises(G.GrantError, match=message):
                    G.open_grant(bytes(bad), identity)


def test_truncated_grants_are_errors() -> None:
    identity = new_identity()
    blob = G.seal_grant(sample_grant(), identity.public_key)
    for length in (0, 5, len(G.MAGIC), G.HEADER_BYTES, G.HEADER_BYTES + 20, len(blob) - 1):
        with pytest.raises(G.GrantError, match="truncated"):
            G.open_grant(blob[:length], identity)
    with pytest.raises(G.GrantError, match="not an imambig grant"):
        G.open_grant(b"PK\x03\x04" + blob[4:], identity)


def test_malformed_payloads_are_errors() -> None:
    with pytest.raises(G.GrantError, match="not valid JSON"):
        G.Grant.from_bytes(b"\xff\xfe")
    with pytest.raises(G.GrantError, match="format"):
        G.Grant.from_bytes(b'{"format": "other"}')
    with pytest.raises(G.GrantError, match="malformed"):
        G.Grant.from_bytes(b'{"format": "imambig-grant/v1", "keys": {}}')
    with pytest.raises(TypeError, match="item ids"):
        G.Grant("m", "u", {"a": "not bytes"})  # type: ignore[dict-item]


def test_low_order_recipient_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    with pytest.raises(G.GrantError, match="invalid"):
        G.seal_grant(sample_grant(), X25519PublicKey.from_public_bytes(bytes(32)))
