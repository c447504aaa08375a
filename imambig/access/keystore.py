"""The keystore: per-item keys sealed chunk by chunk (``storage_schemas.keystore_v2``).

Lives at a different root from the public store, and nothing in the public store can
open it: rows are AES-256-GCM under a data key that is stored only wrapped by the key
provider (envelope encryption), and each row's associated data binds it to its store
(whose id binds the version and the noise fit), array, row and schema, so rows cannot
be swapped or moved between stores or versions. Each item's slot seals its opaque id
and its public record's digest with its key. The attributes carry an HMAC under a key
derived from the data key, so sizes and ids are not taken on a provider's word.

The keystore also keeps the mapping from source paths to the opaque ids the public
store shows: an id is a keyed hash (:meth:`Keystore.opaque_ids`) under a key derived
from the data key, so only a holder of the keystore key can name an item.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from imambig.access.encryption import ChunkCipher, chunk_aad, describe_chunk, subkey
from imambig.access.key_provider import KeyProvider
from imambig.errors import StoreFormatError, TamperedError
from imambig.stores.array_metadata import check_array, open_group
from imambig.stores.item_chunks import ItemChunks
from imambig.stores.location import Location, Mode
from storage_schemas import keystore_v1, keystore_v2

SCHEMA = keystore_v2.SCHEMA
ID_BYTES = keystore_v2.ID_BYTES
DIGEST_BYTES = keystore_v2.DIGEST_BYTES


_MAC_PURPOSE = b"imambig/keystore/attributes/v1"


def _mac(mac_key: bytes, attrs: dict[str, Any]) -> str:
    """HMAC-SHA256 of every attribute but the MAC itself (canonical JSON)."""
    body = {k: v for k, v in attrs.items() if k != "attrs_mac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(mac_key, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, repr=False)
class Slot:
    """One item's sealed entry: its opaque id, its public record's digest, its key."""

    item_id: str  # opaque id, 32 hex digits
    record: bytes  # SHA-256 of the public record (``public_store.record_digest``)
    key: bytes  # imambig.mechanism.keys format

    def __repr__(self) -> str:
        return f"Slot(item_id={self.item_id!r})"  # the key is secret

    @classmethod
    def tombstone(cls, item_id: str, key_bytes: int) -> Slot:
        """The slot of a forgotten item: no key, no record (``imambig forget``)."""
        return cls(item_id, bytes(DIGEST_BYTES), bytes(key_bytes))

    @property
    def forgotten(self) -> bool:
        return not any(self.key) and not any(self.record)


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


class Keystore(ItemChunks):
    def __init__(self, group: zarr.Group, location: Location, provider: KeyProvider) -> None:
        self.group = group
        self.location = location
        self.attrs: dict[str, Any] = dict(group.attrs)
        schema = self.attrs.get("schema")
        if schema == keystore_v1.SCHEMA:
            raise StoreFormatError(f"{location} was written by an earlier version ({schema}); "
                                   "encode the collection again")
        if schema != SCHEMA:
            raise StoreFormatError(f"{location} is not a keystore (schema {SCHEMA})")
        try:
            wrapped = base64.b64decode(self.attrs["wrapped_data_key"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise StoreFormatError(f"{location}: wrapped data key is missing or malformed") from None
        data_key = provider.unwrap(wrapped)
        self._cipher = ChunkCipher(data_key)
        self._mac_key = subkey(data_key, _MAC_PURPOSE)
        self._id_key = subkey(data_key, b"imambig/keystore/item-id/v1")
        if not hmac.compare_digest(str(self.attrs.get("attrs_mac", "")),
                                   _mac(self._mac_key, self.attrs)):
            raise TamperedError(f"keystore {location}: attributes failed authentication "
                                "(changed outside imambig, or another store's)")
        self.sealed = check_array(
            group, "sealed", location, dtype="uint8",
            shape=keystore_v2.LAYOUT.shape("sealed", self.attrs),
            chunks=(1, keystore_v2.sealed_row_bytes(self.chunk_items, self.key_bytes)),
            codecs=keystore_v2.CODECS["sealed"])

    @classmethod
    def create(
        cls,
        location: Location,
        *,
        public_store_id: str,
        version: str,
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
        data_key = provider.data_key(store_id)
        attrs: dict[str, Any] = {
            "schema": SCHEMA,
            "store_id": store_id,
            "public_store_id": public_store_id,
            "version": version,
            "model_id": model_id,
            "n_items": n_items,
            "chunk_items": chunk_items,
            "n_maps": n_maps,
            "k": k,
            "k_public": k_public,
            "key_bytes": key_bytes,
            "key_provider": {"name": provider.name, "fingerprint": provider.fingerprint},
            "wrapped_data_key": base64.b64encode(provider.wrap(data_key)).decode(),
            "complete": False,
        }
        attrs["attrs_mac"] = _mac(subkey(data_key, _MAC_PURPOSE), attrs)
        group = zarr.open_group(location.zarr_store("w", strict=True), mode="w", attributes=attrs)
        row = keystore_v2.sealed_row_bytes(chunk_items, key_bytes)
        group.create_array(
            "sealed", shape=(math.ceil(n_items / chunk_items), row), dtype="uint8",
            chunks=(1, row), compressors=None, fill_value=0,  # ciphertext does not compress
            dimension_names=("row", "sealed_byte"),
        )
        return cls(group, location, provider)

    @classmethod
    def open(cls, location: Location, provider: KeyProvider, mode: Mode = "r") -> Keystore:
        return cls(open_group(location, mode, "keystore"), location, provider)

    @property
    def key_bytes(self) -> int:
        return int(self.attrs["key_bytes"])

    @property
    def slot_bytes(self) -> int:
        return keystore_v2.slot_bytes(self.key_bytes)

    def set_attrs(self, **changes: Any) -> None:
        """Change attributes and their MAC together."""
        self.attrs.update(changes)
        self.attrs["attrs_mac"] = _mac(self._mac_key, self.attrs)
        self.group.attrs.update({**changes, "attrs_mac": self.attrs["attrs_mac"]})

    def opaque_ids(self, names: list[str] | np.ndarray) -> list[str]:
        """The public store's ids of items named ``names`` (source paths): HMAC-SHA256
        under the keystore's id key, 16 bytes as hex. Without the key, an id says
        nothing about the name."""
        return [hmac.new(self._id_key, b"imambig/item-id/v1\0" + str(n).encode(),
                         hashlib.sha256).digest()[:ID_BYTES].hex() for n in names]

    def _aad(self, row: int) -> bytes:
        return chunk_aad(self.attrs["store_id"], "sealed", row, SCHEMA)

    def write_row(self, row: int, slots: list[Slot]) -> None:
        """Seal and write the slots of items ``row*chunk_items ...`` (one whole row)."""
        if len(slots) > self.chunk_items or any(
                len(s.key) != self.key_bytes or len(s.record) != DIGEST_BYTES for s in slots):
            raise ValueError(f"row {row}: expected at most {self.chunk_items} slots with "
                             f"{self.key_bytes}-byte keys")
        plain = b"".join(bytes.fromhex(s.item_id) + s.record + s.key for s in slots)
        plain = plain.ljust(self.chunk_items * self.slot_bytes, b"\0")
        sealed = self._cipher.seal(plain, self._aad(row))
        self.sealed[row] = np.frombuffer(sealed, dtype=np.uint8)

    def read_row(self, row: int) -> list[Slot]:
        rows = self.sealed.shape[0]
        if not 0 <= row < rows:  # a negative row would read another from the end
            raise StoreFormatError(f"keystore {self.location}: row {row} is outside its "
                                   f"{rows} rows")
        try:
            blob = np.asarray(self.sealed[row]).tobytes()
        except (ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise StoreFormatError(f"keystore {self.location}: row {row} unreadable "
                                   f"({type(exc).__name__})") from None
        if not any(blob):
            raise StoreFormatError(f"keystore {self.location}: row {row} was never written")
        plain = self._cipher.open(blob, self._aad(row),
                                  f"{describe_chunk('sealed', row)} at {self.location}")
        size, key_at = self.slot_bytes, ID_BYTES + DIGEST_BYTES
        n = min(self.chunk_items, int(self.attrs["n_items"]) - row * self.chunk_items)
        slots = [plain[i * size : (i + 1) * size] for i in range(n)]
        return [Slot(s[:ID_BYTES].hex(), s[ID_BYTES:key_at], s[key_at:]) for s in slots]

    def entries(self, indices: np.ndarray | list[int]) -> list[Slot]:
        """Slots of the items at ``indices`` (public-store order)."""
        rows: dict[int, list[Slot]] = {}
        out = []
        n_items = int(self.attrs["n_items"])
        for i in np.asarray(indices, dtype=np.int64).tolist():
            # Positions come from the public store or a request: one past the last slot
            # (or negative) names no item of this keystore.
            if not 0 <= i < n_items:
                raise StoreFormatError(f"keystore {self.location}: item position {i} is "
                                       f"outside its {n_items} items")
            r = i // self.chunk_items
            if r not in rows:
                rows[r] = self.read_row(r)
            out.append(rows[r][i % self.chunk_items])
        return out

    def check_public(self, public: Any) -> None:
        """Refuse a public store (``PublicStore``) that is not this keystore's, or
        whose item count differs from the authenticated one here: every bound a reader
        of that store uses comes from this count, not from the provider's word."""
        where = public.location
        if public.attrs.get("store_id") != self.attrs["public_store_id"]:
            raise TamperedError(f"{where} is not the public store of keystore {self.location}")
        if public.n_items != self.n_items:
            raise TamperedError(f"{where} claims {public.n_items:,} items; its keystore "
                                f"holds {self.n_items:,} (changed by the storage provider?)")

    def positions(self, item_ids: list[str], names: list[str] | None = None) -> np.ndarray:
        """Positions (public-store order) of the opaque ``item_ids``, found in the
        sealed slots (the owner's own authenticated data, never the public store's
        ``item_id`` array); unknown items are a ``ValueError`` naming them by
        ``names`` if given."""
        wanted = {i: n for n, i in enumerate(item_ids)}
        found = np.full(len(item_ids), -1, dtype=np.int64)
        rows = math.ceil(self.n_items / self.chunk_items)
        for row in range(rows):
            if (found >= 0).all():
                break
            for j, slot in enumerate(self.read_row(row)):
                if (at := wanted.get(slot.item_id)) is not None:
                    found[at] = row * self.chunk_items + j
        if (found < 0).any():
            missing = [(names or item_ids)[i] for i in np.flatnonzero(found < 0)[:5]]
            raise ValueError(f"{int((found < 0).sum())} items are not in {self.location}: "
                             f"{missing}")
        return found

    def keys(self, indices: np.ndarray | list[int]) -> list[bytes]:
        """Keys of the items at ``indices`` (public-store order)."""
        return [s.key for s in self.entries(indices)]

    def finish(self) -> None:
        self.set_attrs(complete=True)
