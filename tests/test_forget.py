"""Forgetting items: their keys destroyed in the keystore (read raw), their records
emptied, their images gone; everything else byte for byte as it was; grants issued
before are refused; an append does not bring them back; and the old record, which an
attacker may have kept, is useless once the key is gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imambig.access.grant import GrantError
from imambig.access.identity import new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.cli import main
from imambig.config import EncodeConfig, IngestConfig
from imambig.evaluation.metrics import psnr_uint8, to_uint8
from imambig.mechanism.keys import decode_keys, key_seals
from imambig.mechanism.record import Ambiguated
from imambig.model.checkpoint import load_model
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.forget import forget
from imambig.stages.ingest import ingest
from imambig.stages.share import issue_grant, reveal
from imambig.stages.versions import current_version
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from tests.fixtures_model import make_synthetic_images

CFG = IngestConfig(height=32, width=32, split="random:0.8", workers=1)


def _state(public_root: Location, keys_root: Location, provider):
    public = PublicStore.open(current_version(public_root))
    ks = Keystore.open(current_version(keys_root), provider)
    mask, values = public.read(slice(None))
    rows = -(-int(ks.attrs["n_items"]) // ks.chunk_items)
    slots = [s for row in range(rows) for s in ks.read_row(row)]
    return mask, values, public.item_ids(), slots


def test_forget_destroys_keys_records_and_images_and_nothing_else(tiny_model, tmp_path,
                                                                  owner_env) -> None:
    src = tmp_path / "src"
    make_synthetic_images(src, 300)
    images = Location(str(tmp_path / "images"))
    ingest(Location(str(src)), images, CFG)
    public_root, keys_root = Location(str(tmp_path / "pub")), Location(str(tmp_path / "keys"))
    job = EncodeJob(images, tiny_model, public_root, keys_root, EncodeConfig(region_items=64))
    run_encode(job, SerialRegions(), progress=False)
    provider = LocalKeyProvider.from_secrets(Secrets())
    names = open_image_store(images).item_ids().tolist()
    gone = names[5:200:20]  # 10 items over several regions
    before = _state(public_root, keys_root, provider)
    alice = new_identity()
    owner = signing_key(Secrets().signing_key)
    issued = issue_grant(public_root, keys_root, [gone[0], names[1]], alice.public_text(),
                         provider, owner)
    low = issue_grant(public_root, keys_root, [gone[1]], alice.public_text(), provider,
                      owner, k_low=4)
    at = [names.index(n) for n in gone]
    old_records = Ambiguated(before[0][at], before[1][at], decode_keys(
        [before[3][i].key for i in at]), key_seals([before[3][i].key for i in at]))

    report = forget([*gone, "no-such.png"], images, public_root, keys_root, provider)
    assert report.forgotten == gone and set(report.problems) == {"no-such.png"}
    after = _state(public_root, keys_root, provider)
    keep = [i for i in range(300) if i not in at]
    for a, b in zip(after[:3], before[:3], strict=True):
        np.testing.assert_array_equal(a[keep], b[keep])  # the others, byte for byte
    assert [after[3][i] for i in keep] == [before[3][i] for i in keep]
    for i in at:  # the raw keystore: no key, no record digest; the record empty
        assert not any(after[3][i].key) and not any(after[3][i].record)
        assert not after[0][i].any() and not after[1][i].any()
        assert after[2][i] != before[2][i]
    store = open_image_store(images)
    assert not set(gone) & set(store.item_ids().tolist())
    assert not store.read(at).any() and not set(at) & set(store.indices("all").tolist())

    with pytest.raises(GrantError, match="forgotten"):
        reveal(issued, alice, public_text(owner), tiny_model)
    with pytest.raises(GrantError, match="forgotten"):
        reveal(low, alice, public_text(owner), tiny_model)
    with pytest.raises(GrantError, match="forgotten"):
        issue_grant(public_root, keys_root, [gone[2]], alice.public_text(), provider, owner)
    assert main(["forget", gone[0], "--images", images.url, "--public", public_root.url,
                 "--keys", keys_root.url]) == 1  # already forgotten: reported

    # The old record, kept by whoever copied the store, needs the destroyed key: no key
    # the owner still holds decodes it to the face (its own key did).
    net = load_model(tiny_model)[0]
    faces = torch.from_numpy(np.stack([np.asarray(Image.open(src / n).convert("RGB"))
                                       for n in gone])).permute(0, 3, 1, 2)
    with torch.no_grad():
        own = psnr_uint8(to_uint8(net.decode(old_records.authorized_code())), faces)
        best = np.zeros(len(gone))
        for slot in after[3][::7]:
            if not any(slot.key):
                continue
            tried = Ambiguated(old_records.mask, old_records.values,
                               decode_keys([slot.key] * len(gone)),
                               key_seals([slot.key] * len(gone)))
            best = np.maximum(best, psnr_uint8(to_uint8(net.decode(tried.authorized_code())),
                                               faces))
    assert own.mean() > best.mean() + 5, (own.mean(), best.mean())

    # an append of the same source brings none back, nor a copy under a new name
    shutil.copy(src / gone[3], src / "zz-again.png")
    added = ingest(Location(str(src)), images, CFG)
    assert added.written == 0
    reasons = {r["item"]: r["reason"] for r in added.set_aside}
    assert all(reasons[n] == "forgotten" for n in gone) and reasons["zz-again.png"] == "forgotten"
    # and a new version (a model rotation, here the same model re-encoded afresh)
    # publishes them as tombstones
    fresh = EncodeJob(images, tiny_model, Location(str(tmp_path / "pub2")),
                      Location(str(tmp_path / "keys2")), EncodeConfig(region_items=64))
    run_encode(fresh, SerialRegions(), progress=False)
    again = _state(Location(str(tmp_path / "pub2")), Location(str(tmp_path / "keys2")),
                   provider)
    assert all(again[3][i].forgotten and not again[0][i].any() for i in at)
    assert Path(images.url).exists()
