"""The keystore: per-item keys sealed chunk by chunk (``storage_schemas.keystore_v1``).

Lives at a different root from the public store, and nothing in the public store can
open it: rows are AES-256-GCM under a data key that is stored only wrapped by the key
provider (envelope encryption), and each row's associated data binds it to its store,
array, row and schema, so rows cannot be swapped or moved between stores.
"""

from __future__ import annotations

import base64
import math
import uuid
from typing import Any

import numpy as np
import zarr

from imambig.access.encryption import ChunkCipher, chunk_aad, describe_chunk
from imambig.access.key_provider import KeyProvider
from imambig.stores.location import Location, Mode
from storage_schemas import keystore_v1

SCHEMA = keystore_v1.SCHEMA


def assert_separate_roots(public: Location, keystore: Location) -> None:
    """Refuse a keystore that shares a root with the public store: the public side is
    handed to an untrusted provider, so a shared bucket (or nested folder) would
    publish the keys with it."""
    pfs, ppath = public.filesystem()
    kfs, kpath = keystore.filesystem()
    same_fs = type(pfs) is type(kfs)
    remote = public.is_remote
    if same_fs and remote and ppath.split("/")[0] == kpath.split("/")[0]:
        raise ValueError(
            f"public store {public} and keystore {keystore} are in the same bucket; "
            "put the keystore in a separate, private bucket"
        )
    a, b = ppath.rstrip("/") + "/", kpath.rstrip("/") + "/"
    if same_fs and (a.startswith(b) or b.startswith(a)):
        raise ValueError(
            f"public store {public} and keystore {keystore} share a root; "
            "they must live in separate locations"
        )


class Keystore:
    def __init__(self, group: zarr.Group, location: Location, provider: KeyProvider) -> None:
        self.group = group
        self.location = location
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("schema") != SCHEMA:
            raise ValueError(f"{location} is not a keystore (schema {SCHEMA})")
        wrapped = base64.b64decode(self.attrs["wrapped_data_key"])
        self._cipher = ChunkCipher(provider.unwrap(wrapped))

    @classmethod
    def create(
        cls,
        location: Location,
        *,
        public_store_id: str,
        model_id: str,
        n_items: int,
        chunk_items: int,
        n_maps: int,
        k: int,
        k_public: int,
        key_bytes: int,
        provider: KeyProvider,
    ) -> Keystore:
        store_id = uuid.uuid5(uuid.NAMESPACE_URL, f"imambig/keystore/{public_store_id}").hex
        attrs = {
            "schema": SCHEMA,
            "store_id": store_id,
            "public_store_id": public_store_id,
            "model_id": model_id,
            "n_items": n_items,
            "chunk_items": chunk_items,
            "n_maps": n_maps,
            "k": k,
            "k_public": k_public,
            "key_bytes": key_bytes,
            "key_provider": {"name": provider.name, "fingerprint": provider.fingerprint},
            "wrapped_data_key": base64.b64encode(
                provider.wrap(provider.data_key(store_id))
            ).decode(),
            "complete": False,
        }
        group = zarr.open_group(location.zarr_store("w"), mode="w", attributes=attrs)
        row = keystore_v1.sealed_row_bytes(chunk_items, key_bytes)
        group.create_array(
            "sealed", shape=(math.ceil(n_items / chunk_items), row), dtype="uint8",
            chunks=(1, row), compressors=None, fill_value=0,  # ciphertext does not compress
            dimension_names=("row", "sealed_byte"),
        )
        return cls(group, location, provider)

    @classmethod
    def open(cls, location: Location, provider: KeyProvider, mode: Mode = "r") -> Keystore:
        try:
            group = zarr.open_group(location.zarr_store(mode), mode=mode)
        except FileNotFoundError:
            raise FileNotFoundError(f"no keystore at {location}") from None
        return cls(group, location, provider)

    @property
    def chunk_items(self) -> int:
        return int(self.attrs["chunk_items"])

    @property
    def key_bytes(self) -> int:
        return int(self.attrs["key_bytes"])

    def _aad(self, row: int) -> bytes:
        return chunk_aad(self.attrs["store_id"], "sealed", row, SCHEMA)

    def write_row(self, row: int, keys: list[bytes]) -> None:
        """Seal and write the keys of items ``row*chunk_items ...`` (one whole row)."""
        if any(len(k) != self.key_bytes for k in keys) or len(keys) > self.chunk_items:
            raise ValueError(f"row {row}: expected at most {self.chunk_items} keys of "
                             f"{self.key_bytes} bytes")
        plain = b"".join(keys).ljust(self.chunk_items * self.key_bytes, b"\0")
        sealed = self._cipher.seal(plain, self._aad(row))
        self.group["sealed"][row] = np.frombuffer(sealed, dtype=np.uint8)

    def read_row(self, row: int) -> list[bytes]:
        blob = np.asarray(self.group["sealed"][row]).tobytes()
        if not any(blob):
            raise ValueError(f"keystore {self.location}: row {row} was never written")
        plain = self._cipher.open(blob, self._aad(row), f"{describe_chunk('sealed', row)} at {self.location}")
        kb = self.key_bytes
        n = min(self.chunk_items, int(self.attrs["n_items"]) - row * self.chunk_items)
        return [plain[i * kb : (i + 1) * kb] for i in range(n)]

    def keys(self, indices: np.ndarray | list[int]) -> list[bytes]:
        """Keys of the items at ``indices`` (public-store order)."""
        rows: dict[int, list[bytes]] = {}
        out = []
        for i in np.asarray(indices, dtype=np.int64).tolist():
            r = i // self.chunk_items
            if r not in rows:
                rows[r] = self.read_row(r)
            out.append(rows[r][i % self.chunk_items])
        return out

    def finish(self) -> None:
        self.group.attrs["complete"] = True
        self.attrs["complete"] = True
