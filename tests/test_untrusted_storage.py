"""What a storage provider can no longer do (issue #12, items 2, 4, 5, 7, 8): choose
which key a grant carries, substitute a record, mix rows or attributes between store
versions, learn item names, learn from a lower-fidelity grant which unrevealed entries
are fake, or make an incremental encode write items into others' places."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imambig.access.identity import new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig
from imambig.errors import TamperedError
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.share import Revealed, issue_grant, output_names, reveal, write_revealed
from imambig.stores.image_store import ImageStoreWriter, open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore


def _provider() -> LocalKeyProvider:
    return LocalKeyProvider.from_secrets(Secrets())


def _signer():
    return signing_key(Secrets().signing_key)


def _copy(job: EncodeJob, tmp_path: Path) -> tuple[Location, Location]:
    """A copy of the encoded roots that a test may tamper with."""
    public, keys = tmp_path / "public", tmp_path / "keys"
    shutil.copytree(job.public_root.url, public)
    shutil.copytree(job.keys_root.url, keys)
    return Location(str(public)), Location(str(keys))


def _names(job: EncodeJob) -> list[str]:
    return [str(i) for i in open_image_store(job.images).item_ids()]


def _version(root: Location) -> Location:
    return root.join(json.loads(Path(root.url, "current.json").read_text())["version"])


# -- item 2: the storage provider chooses neither the key nor the record -------------------


def test_grant_ignores_item_ids_the_storage_provider_reordered(encoded, tiny_model,
                                                               tmp_path) -> None:
    """The owner finds items in its own sealed keystore slots, never in the public
    ``item_id`` array, so reordered ids change nothing the grant carries."""
    job, _ = encoded
    public, keys = _copy(job, tmp_path)
    alice, name = new_identity(), _names(job)[3]
    honest = reveal(issue_grant(public, keys, [name], alice.public_text(), _provider(),
                                _signer()), alice, public_text(_signer()), tiny_model)
    store = PublicStore.open(_version(public), mode="r+")
    ids = store.item_ids()
    ids[[3, 4]] = ids[[4, 3]]  # the provider points item 3's name at item 4's row
    store.group["item_id"][:] = ids
    blob = issue_grant(public, keys, [name], alice.public_text(), _provider(), _signer())
    shown = reveal(blob, alice, public_text(_signer()), tiny_model)
    assert np.array_equal(shown.images, honest.images)


def test_grant_refuses_a_substituted_public_record(encoded, tmp_path) -> None:
    job, _ = encoded
    public, keys = _copy(job, tmp_path)
    store = PublicStore.open(_version(public), mode="r+")
    values = np.asarray(store.group["values"][:64])
    values[5] = values[6]  # a record that decodes to another face
    store.group["values"][:64] = values
    names = _names(job)
    with pytest.raises(TamperedError, match=r"public records of 1 items differ"):
        issue_grant(public, keys, names[4:7], new_identity().public_text(), _provider(),
                    _signer())


def test_reveal_fails_loudly_on_a_substituted_record(encoded, tiny_model, tmp_path) -> None:
    job, _ = encoded
    public, keys = _copy(job, tmp_path)
    alice, names = new_identity(), _names(job)
    blob = issue_grant(public, keys, names[8:10], alice.public_text(), _provider(), _signer())
    owner = public_text(_signer())
    assert len(reveal(blob, alice, owner, tiny_model).images) == 2
    store = PublicStore.open(_version(public), mode="r+")
    support = np.asarray(store.group["support"][:64])
    support[9] = support[20]  # the provider serves another item's support for item 9
    store.group["support"][:64] = support
    with pytest.raises(TamperedError, match=rf"\['{names[9]}'\]"):
        reveal(blob, alice, owner, tiny_model)


# -- item 5: versions never share a data key, associated data or attributes ------------------


def test_rows_of_another_version_do_not_open(synthetic_store, tiny_model, tmp_path,
                                              owner_env, monkeypatch) -> None:
    """Same model, k' and source, but a rotated owner secret: the records differ, so the
    two versions must not share a store id (today they do, and rows open in either)."""
    def encode(tag: str) -> Location:
        job = EncodeJob(images=synthetic_store, model=tiny_model,
                        public_root=Location(str(tmp_path / f"public-{tag}")),
                        keys_root=Location(str(tmp_path / f"keys-{tag}")),
                        config=EncodeConfig(region_items=128))
        return run_encode(job, SerialRegions(), progress=False).plan.keystore

    first = encode("a")
    monkeypatch.setenv("IMAMBIG_OWNER_SECRET", "b" * 44)
    second = encode("b")
    a, b = Keystore.open(first, _provider()), Keystore.open(second, _provider(), mode="r+")
    assert a.attrs["public_store_id"] != b.attrs["public_store_id"]
    b.sealed[0] = np.asarray(a.sealed[0])
    with pytest.raises(TamperedError, match="keystore chunk 0"):
        b.read_row(0)


@pytest.mark.parametrize(("attr", "value"), [("n_items", 10), ("chunk_items", 32),
                                             ("store_id", "0" * 32), ("version", "v-x")])
def test_keystore_attributes_are_authenticated(encoded, tmp_path, attr, value) -> None:
    job, _ = encoded
    _, keys = _copy(job, tmp_path)
    meta = Path(_version(keys).url, "zarr.json")
    doc = json.loads(meta.read_text())
    doc["attributes"][attr] = value
    meta.write_text(json.dumps(doc))
    with pytest.raises(TamperedError, match="attributes failed authentication"):
        Keystore.open(_version(keys), _provider())


# -- item 7: nothing public names an item or the source ---------------------------------


def test_the_public_store_names_no_item_and_no_source(encoded) -> None:
    job, plan = encoded
    store = PublicStore.open(plan.public)
    ids = store.item_ids().tolist()
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    text = "".join(p.read_text(errors="replace") for p in Path(plan.public.url).rglob("*")
                   if p.is_file())
    source = open_image_store(job.images).attrs["source"]
    for name in _names(job)[:50]:
        assert name not in text and Path(name).stem not in ids
    assert source not in text and "source" not in store.attrs
    # the owner maps names to ids with the keystore, nobody else can
    ks = Keystore.open(plan.keystore, _provider())
    assert ks.opaque_ids(_names(job)) == ids


# -- item 8: revealed file names, item order of incremental encodes -------------------------


def test_output_names_are_safe_and_distinct(tmp_path) -> None:
    names = ["0003.png", "a/b.jpg", "a\\b.jpg", "a_b.jpg", "../../etc/passwd", "..", "C:x.png",
             "CON.png", "X.png", "x.png", ".hidden", "ünï/cöde.png", "a" * 500, "x"]
    out = output_names(names)
    assert out[0] == "0003.png"
    assert len({n.lower() for n in out}) == len(names)
    for n in out:
        assert n.endswith(".png") and "/" not in n and "\\" not in n and ":" not in n
        assert not n.startswith(".") and len(n) <= 120 and n.split(".")[0].upper() != "CON"
    folder = tmp_path / "seen"
    images = np.zeros((len(names), 2, 2, 3), np.uint8)
    paths = write_revealed(folder, Revealed(names, images))
    assert sorted(p.name for p in folder.iterdir()) == sorted(out)
    assert all(p.resolve().parent == folder.resolve() for p in paths)
    (folder / out[1]).unlink()
    (folder / out[1]).symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(OSError):
        write_revealed(folder, Revealed(names, images))
    assert not (tmp_path / "elsewhere.png").exists()


def test_an_incremental_encode_refuses_items_that_moved(synthetic_store, tiny_model, tmp_path,
                                                        owner_env) -> None:
    full = open_image_store(synthetic_store)
    grown = Location(str(tmp_path / "grown"))
    ids = full.item_ids()
    w = ImageStoreWriter.create(grown, n_items=200, height=32, width=32, chunk_items=100,
                                attrs={"source": "synthetic"})
    w.write_images(0, full.read(slice(100, 300)))
    w.write_labels(list(ids[100:300]), full.splits()[100:300], full.identities()[100:300],
                   full.source_digests()[100:300])
    w.finish()
    job = EncodeJob(images=grown, model=tiny_model,
                    public_root=Location(str(tmp_path / "public")),
                    keys_root=Location(str(tmp_path / "keys")),
                    config=EncodeConfig(region_items=64))
    assert run_encode(job, SerialRegions(), progress=False).encoded == 200
    # New images whose names sort first: ingest puts them in front, shifting the rest.
    w = ImageStoreWriter.open(grown)
    w.resize(300)
    w.write_images(0, full.read(slice(0, 300)))
    w.write_labels(list(ids), full.splits(), full.identities(), full.source_digests())
    w.finish()
    with pytest.raises(ValueError, match="items moved in the image store"):
        run_encode(job, SerialRegions(), progress=False)
