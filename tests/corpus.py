"""Valid samples of every input imambig parses from outside, and the parsers, for the
malformed-input corpus (``test_malformed_inputs``) and the fuzz test
(``test_fuzz_parsers``). Everything is built from fixed values, so the corpus is the
same on every run; the keys and secrets here are public test values."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from imambig.access.grant import Grant, GrantItem, open_grant, seal_grant
from imambig.access.identity import load_identity, parse_private_key
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore, Slot
from imambig.access.owner_key import public_text, signing_key
from imambig.mechanism.keys import decode_key, encode_key
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore, record_digest

IDENTITY = parse_private_key(
    "imambig-secret-v1:" + base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("="))
OWNER = signing_key(bytes(range(100, 132)))
OWNER_PUBLIC = public_text(OWNER)
PROVIDER = LocalKeyProvider(bytes(range(200, 232)))
NOW = datetime(2030, 1, 1, tzinfo=UTC)

# The small stores: 6 items in chunks of 3, 2 maps of 16 positions, k' = 4, k = 2.
N, CHUNK, MAPS, M, K, KP = 6, 3, 2, 16, 2, 4
STORE_ID, VERSION, MODEL_ID = "ab" * 16, "v-0123456789abcdef-k4-d2", "0123456789abcdef"


def key_sample() -> bytes:
    """A paper-size key of a sealed record (L=20, k'=256, k=128)."""
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 256), bool)
    np.put_along_axis(mask, np.argsort(rng.random((20, 256)), axis=1)[:, :128], True, axis=1)
    return encode_key(mask, seal=bytes(range(16)))


def grant_sample(**change: Any) -> Grant:
    items = tuple(GrantItem(f"{i:06d}.jpg", f"{i:032x}", i, bytes([i]) * 32, key_sample())
                  for i in range(2))
    fields = dict(model_id=MODEL_ID, store_id=STORE_ID, version=VERSION,
                  store_url="s3://public/store", items=items,
                  created_at="2029-01-01T00:00:00+00:00", expires_at="2031-01-01T00:00:00+00:00")
    return Grant(**{**fields, **change})


def sealed_grant_sample(**change: Any) -> bytes:
    return seal_grant(grant_sample(**change), OWNER, IDENTITY.public_text())


def identity_file_sample() -> bytes:
    return (f"# imambig identity: keep this file private\n# public key: "
            f"{IDENTITY.public_text()}\n{IDENTITY.private_text()}\n").encode()


def _records() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(1)
    mask = np.zeros((N, MAPS, M), bool)
    np.put_along_axis(mask, np.argsort(rng.random((N, MAPS, M)), axis=-1)[..., :KP], True, -1)
    values = rng.standard_normal((N, MAPS, KP)).astype(np.float16)
    return mask, values, [f"{i:032x}" for i in range(N)]


def public_store_sample(folder: Path) -> Location:
    where = Location(str(folder))
    store = PublicStore.create(
        where, store_id=STORE_ID, version=VERSION, n_items=N, chunk_items=CHUNK, n_maps=MAPS,
        code_length=M, k=K, k_public=KP, model_id=MODEL_ID, image_size=(8, 8),
        noise_fit={"file": "noise.npz", "sha256": "0" * 64})
    mask, values, ids = _records()
    for s in range(0, N, CHUNK):
        store.write_region(s, mask[s : s + CHUNK], values[s : s + CHUNK], ids[s : s + CHUNK])
    store.finish()
    return where


def keystore_sample(folder: Path) -> Location:
    where = Location(str(folder))
    key_len = len(encode_key(np.eye(MAPS, KP, dtype=bool)))
    ks = Keystore.create(where, public_store_id=STORE_ID, version=VERSION, model_id=MODEL_ID,
                         n_items=N, chunk_items=CHUNK, n_maps=MAPS, k=1, k_public=KP,
                         key_bytes=key_len, provider=PROVIDER)
    mask, values, ids = _records()
    for s in range(0, N, CHUNK):
        ks.write_row(s // CHUNK, [
            Slot(ids[i], record_digest(STORE_ID, ids[i], mask[i], values[i]),
                 encode_key(np.roll(np.eye(MAPS, KP, dtype=bool), i, axis=1)))
            for i in range(s, min(s + CHUNK, N))])
    ks.finish()
    return where


def pointer_sample() -> bytes:
    """A ``current.json`` of a root whose earlier version was replaced."""
    return json.dumps({"version": VERSION, "n_items": N,
                       "superseded": {"v-fedcba9876543210-k4-d4": 1.9e9}}).encode()


def lease_sample() -> bytes:
    return json.dumps({"owner": "host:1:" + "ab" * 16, "host": "host", "pid": 1,
                       "pid_start": "12", "boot_id": "b", "pid_ns": "pid:[1]",
                       "acquired": 1.9e9, "expires": 1.9e9 + 120}).encode()


def marker_sample() -> bytes:
    from imambig.stages.encode.plan import RegionManifest

    return json.dumps(RegionManifest(0, CHUNK, CHUNK, "ab" * 32, 1.5, 1.9e9, 1.9e9 + 1)
                      .to_dict()).encode()


def release_record_sample() -> bytes:
    return json.dumps({"model_id": MODEL_ID, "k_public": KP, "noise_design": 4,
                       "noise_fit_sha256": "0" * 64, "value_bits": 3, "precision": "fp32",
                       "owner_fingerprint": "0" * 16, "lineage": [], "start": None}).encode()


def manifest_sample() -> bytes:
    return json.dumps({"format": "imambig.publication/1", "version": VERSION,
                       "objects": [{"path": "zarr.json", "bytes": 2, "sha256": "0" * 64},
                                   {"path": "values/c/0/0/0", "bytes": 9, "sha256": "1" * 64}]
                       }).encode()


def evaluation_sample() -> bytes:
    return json.dumps({"rows": [{"attack": "random", "psnr": 10.0}], "rates": {"bpp": 0.5},
                       "n_items": 2, "split": "test", "model_id": MODEL_ID,
                       "settings": {}, "table": [], "curves": {"jpeg": [[0.5, 30.0]]},
                       "linkage": {}}).encode()


def noise_sample() -> bytes:
    """A noise file of the ``tiny`` preset (an untrained model, random images)."""
    import torch

    from imambig.config import PRESETS
    from imambig.mechanism.noise_model import fit_noise_model
    from imambig.model.autoencoder import SparseAutoencoder

    torch.manual_seed(0)
    model = SparseAutoencoder(PRESETS["tiny"])
    return fit_noise_model(model, MODEL_ID, [torch.rand(48, 3, 32, 32)], 32).to_bytes()


def model_sample(folder: Path) -> bytes:
    """A ``model.safetensors`` of the ``tiny`` preset (untrained)."""
    import torch

    from imambig.config import PRESETS
    from imambig.model.autoencoder import SparseAutoencoder
    from imambig.model.checkpoint import MODEL_FILE, save_model

    torch.manual_seed(0)
    save_model(Location(str(folder)), SparseAutoencoder(PRESETS["tiny"]), {})
    return (folder / MODEL_FILE).read_bytes()


# -- parsers: each reads one input the way imambig does -----------------------------------


def parse_key(data: bytes) -> object:
    return decode_key(data)


def parse_grant(data: bytes) -> object:
    return open_grant(data, IDENTITY, OWNER_PUBLIC, now=NOW)


def parse_grant_body(data: bytes) -> object:
    return Grant.from_bytes(data)


def parse_identity_file(data: bytes, folder: Path) -> object:
    path = folder / "identity"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return load_identity(path)


def parse_public_store(folder: Path) -> object:
    store = PublicStore.open(Location(str(folder)))
    return store.read(np.arange(store.n_items)), store.item_ids()


def parse_pointer(data: bytes) -> object:
    from imambig.stages.versions import parse_pointer as parse

    return Location("/roots/public").join(parse(data, "current.json")["version"])


def parse_lease(data: bytes) -> object:
    from imambig.stores.lease import _parse

    return _parse((data, "token"))


def parse_marker(data: bytes) -> object:
    from imambig.stages.encode.plan import RegionManifest

    return RegionManifest.from_json(data, "marker")


def parse_release_record(data: bytes) -> object:
    from imambig.stages.encode.release_binding import Mechanism

    return Mechanism.from_json(data, Location("/keys/_releases/x.json"))


def parse_manifest(data: bytes) -> object:
    from imambig.stages.publish import read_manifest

    return read_manifest(data, "MANIFEST.json")


def parse_evaluation(data: bytes) -> object:
    from imambig.study.evaluate import load_evaluation

    return load_evaluation(data.decode("utf-8", errors="replace"))


def parse_noise(data: bytes) -> object:
    from imambig.config import PRESETS
    from imambig.mechanism.noise_model import NoiseModel

    return NoiseModel.from_bytes(data, PRESETS["tiny"])


def parse_model(data: bytes) -> object:
    from imambig.model.checkpoint import verify_model_bytes

    return verify_model_bytes(data, "model")


def parse_keystore(folder: Path) -> object:
    ks = Keystore.open(Location(str(folder)), PROVIDER)
    return [ks.read_row(r) for r in range(ks.sealed.shape[0])]


# -- editing stores the way a storage provider could -----------------------------------


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def edit_array_metadata(store: Path, name: str, change: Callable[[dict], None]) -> None:
    """Change an array's metadata where readers find it: its own ``zarr.json`` and the
    group's consolidated copy."""
    edit_json(store / name / "zarr.json", change)

    def consolidated(doc: dict) -> None:
        meta = (doc.get("consolidated_metadata") or {}).get("metadata", {})
        if name in meta:
            change(meta[name])

    edit_json(store / "zarr.json", consolidated)


def edit_attributes(store: Path, change: Callable[[dict], None]) -> None:
    edit_json(store / "zarr.json", lambda doc: change(doc["attributes"]))
