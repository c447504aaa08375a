"""The stored-bytes golden check that runs on every machine: mechanism, seal and keys
from stored bottlenecks.

The encoder's float kernels round differently on different CPUs, so what
``imambig encode`` writes is checked per machine kind (``tests/golden/__init__.py``).
Everything after the encoder is the same on every machine given the same bottlenecks:
the mechanism's products, sums and exponentials are correctly rounded
(``imambig.mechanism.exact_float``), the rest is element-wise IEEE arithmetic, integer
code and AES. So its inputs are stored once (``mechanism.safetensors``: the bottlenecks
of the golden encoding's 64 images and the grouped linear layer's weights;
``mechanism_noise.npz``: that encoding's noise fit) and its outputs are compared,
digest by digest, with ``mechanism.json`` on every machine:

- ``records``: each item's public record (packed support, little-endian float16 values);
- ``keys``: each item's full key (seal and support);
- ``entries_keys``: each item's lower-fidelity key at ``k_low = k / 2`` (grant entries);
- ``record_digests``: each record's digest bound to the store and the item's opaque id,
  as the keystore seals it beside the key;
- ``keystore_rows``: each keystore row as stored (AES-GCM under the fixed test keystore
  key, deterministic nonces).

The inputs come from the golden encoding on the machine that made them, whose stored
records and keystore rows they reproduced byte for byte (``python -m tests.golden.make
--inputs`` checks that before writing them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore, Slot
from imambig.config import preset
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.grant_entries import encode_entries_keys, revealed_entries
from imambig.mechanism.keys import decode_keys, key_bytes, stored_records
from imambig.mechanism.noise_model import NoiseModel
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stages.encode.images import EncodedBatch, ambiguate_bottlenecks
from imambig.stores.location import Location
from imambig.stores.public_store import record_digests

HERE = Path(__file__).parent
DIGESTS = HERE / "mechanism.json"
TENSORS = HERE / "mechanism.safetensors"
NOISE = HERE / "mechanism_noise.npz"
# Fixed, public test values (the golden encoding's): never use these for real stores.
OWNER_SECRET = bytes(range(32))
KEYSTORE_KEY = bytes(range(32, 64))


def load() -> tuple[dict[str, Any], dict[str, np.ndarray], bytes]:
    """The stored description (inputs and digests), tensors and noise fit."""
    return (json.loads(DIGESTS.read_text()), safetensors.numpy.load(TENSORS.read_bytes()),
            NOISE.read_bytes())


def encode(setting: dict[str, Any], tensors: dict[str, np.ndarray],
           noise_bytes: bytes) -> tuple[SparseAutoencoder, NoiseModel, EncodedBatch]:
    """The mechanism, seal and key coding on the stored bottlenecks."""
    model = SparseAutoencoder(preset(setting["preset"])).eval()
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(tensors["linear_weight"]))
    noise = NoiseModel.from_bytes(noise_bytes)
    decoys = DecoyMap.for_owner(noise, OWNER_SECRET)
    h = torch.from_numpy(tensors["bottlenecks"])
    return model, noise, ambiguate_bottlenecks(model, noise, decoys, h)


def digests(setting: dict[str, Any], tensors: dict[str, np.ndarray], noise_bytes: bytes,
            workdir: Path) -> dict[str, list[str]]:
    """Every digest ``mechanism.json`` keeps, computed here (a keystore is written under
    ``workdir``)."""
    model, noise, enc = encode(setting, tensors, noise_bytes)
    c = model.config
    # the keys decode to the records' real entries, and cut down to grant entries
    amb = stored_records(enc.mask, enc.values, enc.keys)
    assert (decode_keys(enc.keys) == amb.real).all()
    entries = encode_entries_keys(*revealed_entries(amb, c.k // 2))
    names, store_id, chunk = setting["names"], setting["store_id"], setting["chunk_items"]
    ks = Keystore.create(
        Location(str(workdir / "keystore")), public_store_id=store_id,
        version=setting["version"], model_id=noise.model_id, n_items=len(names),
        chunk_items=chunk, n_maps=c.n_maps, k=c.k, k_public=noise.k_public,
        key_bytes=key_bytes(c.n_maps, noise.k_public, c.k), provider=LocalKeyProvider(KEYSTORE_KEY))
    opaque = ks.opaque_ids(names)
    records = record_digests(store_id, opaque, enc.mask, enc.values)
    rows = []
    for row, start in enumerate(range(0, len(names), chunk)):
        part = slice(start, start + chunk)
        ks.write_row(row, [Slot(*s) for s in zip(opaque[part], records[part], enc.keys[part],
                                                 strict=True)])
        rows.append(_sha(np.asarray(ks.sealed[row]).tobytes()))
    return {
        "records": [_sha(record_bytes(m, v)) for m, v in zip(enc.mask, enc.values, strict=True)],
        "keys": [_sha(k) for k in enc.keys],
        "entries_keys": [_sha(k) for k in entries],
        "record_digests": [r.hex() for r in records],
        "keystore_rows": rows,
    }


def record_bytes(mask: np.ndarray, values: np.ndarray) -> bytes:
    """One public record as stored: packed support, little-endian float16 values."""
    return np.packbits(mask).tobytes() + np.asarray(values, "<f2").tobytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
