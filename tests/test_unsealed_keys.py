"""Unsealed (version 1) keys are refused wherever records are sealed.

A version 1 key marks entries of an unsealed record. Applied to a sealed record it keeps
the wrong entries of padded values: a decode into noise that raises nothing. Every
public store's records are sealed, so such a key is refused by the owner (no grant is
issued from a keystore holding one), by the user (a signed grant holding one, alone or
beside sealed keys, reveals nothing) and by the library (``stored_records``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from imambig.access.grant import GrantError, open_grant, seal_grant
from imambig.access.identity import new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore, Slot
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.errors import KeyFormatError
from imambig.mechanism.keys import decode_keys, encode_keys, key_bytes, stored_records
from imambig.stages.share import issue_grant, reveal
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore


def _provider() -> LocalKeyProvider:
    return LocalKeyProvider.from_secrets(Secrets())


def _unsealed(keys: list[bytes]) -> list[bytes]:
    """The same supports as version 1 keys: no seal."""
    return encode_keys(decode_keys(keys))


def _unsealed_keystore(plan, root: Path) -> Location:
    """A copy of the encoded keystore, sealed by the owner's own key provider, whose
    slots hold version 1 keys of the same supports."""
    src = Keystore.open(plan.keystore, _provider())
    a = src.attrs
    out = Location(str(root / plan.version))
    ks = Keystore.create(
        out, public_store_id=a["public_store_id"], version=a["version"],
        model_id=a["model_id"], n_items=a["n_items"], chunk_items=a["chunk_items"],
        n_maps=a["n_maps"], k=a["k"], k_public=a["k_public"],
        key_bytes=key_bytes(a["n_maps"], a["k_public"], a["k"], sealed=False),
        provider=_provider())
    for row in range(-(-a["n_items"] // a["chunk_items"])):
        slots = src.read_row(row)
        keys = _unsealed([s.key for s in slots])
        ks.write_row(row, [Slot(s.item_id, s.record, k) for s, k in zip(slots, keys,
                                                                         strict=True)])
    ks.finish()
    return out


def test_stored_records_refuse_unsealed_keys(encoded) -> None:
    _, plan = encoded
    public = PublicStore.open(plan.public)
    at = np.arange(8)
    mask, values = public.read(at)
    keys = Keystore.open(plan.keystore, _provider()).keys(at)
    opened = stored_records(mask, values, keys)
    assert opened.seals is not None and opened.real.sum() == len(at) * int(
        public.attrs["k"]) * int(public.attrs["n_maps"])
    v1 = _unsealed(keys)
    for bad in (v1, [v1[0], *keys[1:]], [*keys[:-1], v1[-1]]):
        with pytest.raises(KeyFormatError, match="unsealed"):
            stored_records(mask, values, bad)


def test_no_grant_is_issued_from_unsealed_keys(encoded, tmp_path) -> None:
    job, plan = encoded
    keystore = _unsealed_keystore(plan, tmp_path)
    ids = [str(i) for i in open_image_store(job.images).item_ids()][:4]
    alice = new_identity()
    signer = signing_key(Secrets().signing_key)
    for k_low in (None, 4):
        with pytest.raises(GrantError, match="unsealed"):
            issue_grant(plan.public, keystore, ids, alice.public_text(), _provider(), signer,
                        k_low=k_low)
    # the same items from the owner's real keystore are granted
    assert issue_grant(plan.public, plan.keystore, ids, alice.public_text(), _provider(),
                       signer)


def test_reveal_refuses_unsealed_keys_in_a_signed_grant(encoded, tiny_model) -> None:
    job, plan = encoded
    ids = [str(i) for i in open_image_store(job.images).item_ids()][:4]
    alice = new_identity()
    signer = signing_key(Secrets().signing_key)
    owner = public_text(signer)
    blob = issue_grant(plan.public, plan.keystore, ids, alice.public_text(), _provider(),
                       signer)
    grant = open_grant(blob, alice, owner)
    v1 = _unsealed([i.key for i in grant.items])
    for which in ([0, 1, 2, 3], [0], [3]):  # all, and mixed with sealed keys either end
        items = tuple(dataclasses.replace(item, key=v1[j]) if j in which else item
                      for j, item in enumerate(grant.items))
        signed = seal_grant(dataclasses.replace(grant, items=items), signer,
                            alice.public_text())
        with pytest.raises(GrantError, match="unsealed"):
            reveal(signed, alice, owner, tiny_model)
    assert len(reveal(blob, alice, owner, tiny_model).images) == len(ids)
