"""Grants and reveal through real stores: the right user sees exactly the granted items."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imambig.access.encryption import TamperedError
from imambig.access.grant import GrantError, open_grant
from imambig.access.identity import new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.cli import main
from imambig.evaluation.metrics import to_uint8
from imambig.mechanism.keys import decode_keys, key_seals
from imambig.mechanism.record import Ambiguated, scatter_code
from imambig.model.checkpoint import load_model
from imambig.stages.share import issue_grant, reveal
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore


def provider() -> LocalKeyProvider:
    """The keystore key in the environment now (tests change it)."""
    return LocalKeyProvider.from_secrets(Secrets())


def signer() -> Ed25519PrivateKey:
    """The owner signing key in the environment now."""
    return signing_key(Secrets().signing_key)


def owner() -> str:
    return public_text(signer())


def test_grant_reveals_exactly_the_granted_items(encoded, tiny_model) -> None:
    job, plan = encoded
    public = PublicStore.open(plan.public)
    ids = [str(i) for i in open_image_store(job.images).item_ids()]
    granted = ids[10:20]
    alice = new_identity()
    blob = issue_grant(job.public_root, job.keys_root, granted, alice.public_text(),
                       provider(), signer())
    out = reveal(blob, alice, owner(), tiny_model)
    assert out.item_ids == granted
    # equals the authorized decode computed from the keystore directly
    model, _, _ = load_model(tiny_model)
    ks = Keystore.open(plan.keystore, provider())
    mask, values = public.read(np.arange(10, 20))
    keys = ks.keys(np.arange(10, 20))
    amb = Ambiguated(mask, values, decode_keys(keys), key_seals(keys))
    with torch.no_grad():
        expected = to_uint8(model.decode(amb.authorized_code()))
        # the key's support alone, on the sealed record, decodes to nothing like it
        unsealed = to_uint8(model.decode(scatter_code(mask, np.where(amb.real, values, 0))))
    assert np.array_equal(out.images, expected.permute(0, 2, 3, 1).numpy())
    assert (expected.float() - unsealed.float()).abs().mean() > 30
    # the grant holds the keys of those 10 items and nothing else
    grant = open_grant(blob, alice, owner())
    assert sorted(grant.keys) == sorted(granted)
    assert grant.version == plan.version
    assert len(blob) < 10 * 400 + 1000


def test_wrong_identity_and_tampered_grant_fail_clearly(encoded, tiny_model) -> None:
    job, _ = encoded
    alice, mallory = new_identity(), new_identity()
    blob = issue_grant(job.public_root, job.keys_root, ["0001.png"], alice.public_text(),
                       provider(), signer())
    with pytest.raises(GrantError, match="another identity"):
        reveal(blob, mallory, owner(), tiny_model)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    with pytest.raises(GrantError, match="tampered"):
        reveal(bytes(flipped), alice, owner(), tiny_model)


def test_flipped_byte_in_a_keystore_chunk_is_caught(encoded, tmp_path) -> None:
    _, plan = encoded
    copy = tmp_path / "keystore"
    shutil.copytree(plan.keystore.url, copy)
    ks = Keystore.open(Location(str(copy)), provider(), mode="r+")
    row = np.asarray(ks.sealed[1])
    row[100] ^= 0x40
    ks.sealed[1] = row
    ks.read_row(0)  # other rows still open
    with pytest.raises(TamperedError, match="keystore chunk 1"):
        ks.read_row(1)


def test_keystore_needs_the_master_key(encoded, monkeypatch) -> None:
    import base64
    import secrets

    _, plan = encoded
    monkeypatch.setenv("IMAMBIG_KEYSTORE_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    with pytest.raises(TamperedError, match="another master key"):
        Keystore.open(plan.keystore, provider())


def test_cli_identity_grant_reveal(encoded, tiny_model, tmp_path, capsys) -> None:
    job, _ = encoded
    assert main(["keys", "new-identity", "--out", str(tmp_path / "bob.id")]) == 0
    pub = capsys.readouterr().out.strip()
    assert pub.startswith("imambig-pub-v1:")
    signing = str(tmp_path / "owner.key")
    assert main(["keys", "new-owner", "--out", signing]) == 0
    owner_key = capsys.readouterr().out.strip()
    assert owner_key.startswith("imambig-owner-v1:")
    assert main(["keys", "new-owner", "--out", signing]) == 2  # never replaced
    assert main(["keys", "owner-public", "--signing-key", f"file:{signing}"]) == 0
    assert capsys.readouterr().out.strip() == owner_key
    assert main(["grant", "--public", str(job.public_root), "--keys", str(job.keys_root), "--to", pub,
                 "--items", "0003.png", "0004.png", "--signing-key", f"file:{signing}",
                 "--out", str(tmp_path / "g.bin")]) == 0
    assert main(["reveal", "--grant", str(tmp_path / "g.bin"), "--identity",
                 str(tmp_path / "bob.id"), "--owner", owner_key, "--model", str(tiny_model),
                 "--out", str(tmp_path / "seen")]) == 0
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == ["0003.png", "0004.png"]
    # unknown items are a clear error, not a crash
    assert main(["grant", "--public", str(job.public_root), "--keys", str(job.keys_root), "--to", pub,
                 "--items", "nope.png", "--signing-key", f"file:{signing}",
                 "--out", str(tmp_path / "g2.bin")]) == 2
    # a grant checked against another owner key is refused
    assert main(["reveal", "--grant", str(tmp_path / "g.bin"), "--identity",
                 str(tmp_path / "bob.id"), "--owner", owner(), "--model", str(tiny_model),
                 "--out", str(tmp_path / "seen2")]) == 2
