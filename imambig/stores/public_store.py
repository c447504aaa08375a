"""The public store: ambiguated codes laid out by ``storage_schemas.public_store_v2``.

Readable with plain ``zarr`` or ``xarray.open_zarr`` (no imambig needed): ``support``
is ``np.packbits`` of the public positions, ``values`` the float16 values in position
order, ``item_id`` opaque ids (a keyed hash of each source path, see
``imambig.access.keystore``). Writers lay out the whole store first (``create``), then
fill chunk-aligned regions, possibly from many processes, and ``finish`` marks it
complete.

The store is handed to an untrusted provider, so opening one checks its attributes and
its arrays' metadata (types, bounds, shapes, codecs) before a chunk is read, and each
item's public record has a digest (:func:`record_digest`) that the keystore seals beside
the item's key: whoever holds the key can tell a substituted record.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from imambig.errors import StoreFormatError
from imambig.stores.array_metadata import check_array, open_group
from imambig.stores.item_chunks import ItemChunks
from imambig.stores.location import Location, Mode
from storage_schemas import public_store_v1, public_store_v2

SCHEMA = public_store_v2.SCHEMA
# Support bits are close to random (k'/m = 1/2 set): compression cannot help, so none.
# float16 values: byte-shuffle puts the exponent bytes together, where zstd finds the
# only redundancy there is (signs and exponents of similar magnitudes).
VALUES_CODEC = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=2)


def public_store_id(binding: Mapping[str, Any]) -> str:
    """The id of one store version: a digest of everything its records depend on
    (model, k', version, noise fit, chunking, source, owner secret's fingerprint). A
    rebuilt store gets the same id (and the same bytes); any other version, another."""
    doc = json.dumps({"domain": "imambig/public-store/v2", **binding}, sort_keys=True,
                     separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def record_digest(store_id: str, item_id: str, mask: np.ndarray, values: np.ndarray) -> bytes:
    """SHA-256 of one item's public record as stored (packed support, float16 values),
    bound to its store and item: what the keystore seals beside the item's key."""
    h = hashlib.sha256(b"imambig/record/v1\0")
    h.update(f"{store_id}\0{item_id}\0{mask.shape}\0{values.shape}\0".encode())
    h.update(pack_support(np.asarray(mask, bool)).tobytes())
    h.update(np.ascontiguousarray(values, dtype="<f2").tobytes())
    return h.digest()


def record_digests(store_id: str, item_ids: Sequence[str], mask: np.ndarray,
                   values: np.ndarray) -> list[bytes]:
    return [record_digest(store_id, i, mask[b], values[b]) for b, i in enumerate(item_ids)]


def pack_support(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask, axis=-1)


def unpack_support(bits: np.ndarray, code_length: int) -> np.ndarray:
    return np.unpackbits(bits, axis=-1, count=code_length).astype(bool)


class PublicStore(ItemChunks):
    """Read and write access to one public store."""

    def __init__(self, group: zarr.Group, location: Location) -> None:
        self.group = group
        self.location = location
        self.attrs: dict[str, Any] = dict(group.attrs)
        schema = self.attrs.get("schema")
        if schema == public_store_v1.SCHEMA:
            raise StoreFormatError(
                f"{location} was written by an earlier version ({schema}: item ids in the "
                "clear, no record digests); encode the collection again")
        if schema != SCHEMA:
            raise StoreFormatError(f"{location} is not a public store (schema {SCHEMA})")
        if problems := public_store_v2.attribute_problems(self.attrs):
            raise StoreFormatError(f"{location}: {'; '.join(problems)}")
        a, c = self.attrs, self.attrs["chunk_items"]
        layout = public_store_v2.LAYOUT
        for name, dtype, chunks in (
                ("support", "uint8", (c, a["n_maps"], a["code_length"] // 8)),
                ("values", "float16", (c, a["n_maps"], a["k_public"])),
                ("item_id", "string", (c,))):
            check_array(group, name, location, dtype=dtype, shape=layout.shape(name, a),
                        chunks=chunks, codecs=public_store_v2.CODECS[name])

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        location: Location,
        *,
        store_id: str,
        version: str,
        n_items: int,
        chunk_items: int,
        n_maps: int,
        code_length: int,
        k: int,
        k_public: int,
        model_id: str,
        image_size: tuple[int, int],
        noise_fit: dict[str, Any],
    ) -> PublicStore:
        attrs = {
            "schema": SCHEMA,
            "store_id": store_id,
            "model_id": model_id,
            "version": version,
            "n_items": n_items,
            "chunk_items": chunk_items,
            "n_maps": n_maps,
            "code_length": code_length,
            "k": k,
            "k_public": k_public,
            "quantizer": "float16",
            "image_height": image_size[0],
            "image_width": image_size[1],
            "noise_fit": noise_fit,
            "complete": False,
        }
        group = zarr.open_group(location.zarr_store("w", strict=True), mode="w", attributes=attrs)
        layout = public_store_v2.LAYOUT
        group.create_array(
            "support", shape=layout.shape("support", attrs), dtype="uint8",
            chunks=(chunk_items, n_maps, code_length // 8), compressors=None, fill_value=0,
            dimension_names=layout.array("support").dims,
        )
        group.create_array(
            "values", shape=layout.shape("values", attrs), dtype="float16",
            chunks=(chunk_items, n_maps, k_public), compressors=VALUES_CODEC, fill_value=0,
            dimension_names=layout.array("values").dims,
        )
        group.create_array(
            "item_id", shape=(n_items,), dtype=str, chunks=(chunk_items,),
            dimension_names=("item",),
        )
        return cls(group, location)

    @classmethod
    def open(cls, location: Location, mode: Mode = "r") -> PublicStore:
        # Writers read the live metadata; consolidated metadata is a snapshot for
        # readers, refreshed by ``finish``.
        group = open_group(location, mode, "public store",
                           use_consolidated=None if mode == "r" else False)
        return cls(group, location)

    # -- access -----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete") is True

    def write_region(
        self, start: int, mask: np.ndarray, values: np.ndarray, item_ids: list[str]
    ) -> None:
        """Write items ``start:start+B``; the region must be chunk-aligned (whole chunks,
        the last one may end at ``n_items``) so concurrent writers never share a chunk."""
        stop = start + len(mask)
        if start % self.chunk_items or (stop % self.chunk_items and stop != self.n_items):
            raise ValueError(f"region {start}:{stop} is not aligned to {self.chunk_items} items")
        self.group["support"][start:stop] = pack_support(mask)
        self.group["values"][start:stop] = values.astype(np.float16)
        self.group["item_id"][start:stop] = np.asarray(item_ids, dtype=str)

    def read(self, selection: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask (B, L, m) bool, values (B, L, k') float16) of the selected items."""
        try:
            if isinstance(selection, slice):
                bits = np.asarray(self.group["support"][selection])
                values = np.asarray(self.group["values"][selection])
            else:
                idx = np.asarray(selection, dtype=np.int64)
                bits = np.asarray(self.group["support"].get_orthogonal_selection((idx,)))
                values = np.asarray(self.group["values"].get_orthogonal_selection((idx,)))
        except (ValueError, RuntimeError, TypeError, KeyError, IndexError) as exc:
            # A chunk that does not decode (the codec's own error type varies).
            raise StoreFormatError(f"{self.location}: records unreadable "
                                   f"({type(exc).__name__}: {str(exc)[:200]})") from None
        return unpack_support(bits, int(self.attrs["code_length"])), values

    def item_ids(self, selection: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Opaque ids (str) of the items in ``selection`` (a slice or item indices)."""
        arr = self.group["item_id"]
        try:
            got = (arr[selection] if isinstance(selection, slice)
                   else arr.get_orthogonal_selection((np.asarray(selection, dtype=np.int64),)))
        except (ValueError, RuntimeError, TypeError, KeyError, IndexError) as exc:
            raise StoreFormatError(f"{self.location}: item ids unreadable "
                                   f"({type(exc).__name__}: {str(exc)[:200]})") from None
        # Zarr hands out numpy's variable-width StringDType; callers get plain '<U' strings.
        return np.array(np.asarray(got).tolist(), dtype=str)

    def index_of(self, item_ids: list[str], names: Sequence[str] | None = None) -> np.ndarray:
        """Positions of opaque ``item_ids``; errors name the items by ``names`` if given."""
        lookup = {v: i for i, v in enumerate(self.item_ids().tolist())}
        missing = [n for i, n in zip(item_ids, names or item_ids, strict=True)
                   if i not in lookup]
        if missing:
            raise ValueError(f"{len(missing)} items are not in {self.location}: {missing[:5]}")
        return np.array([lookup[i] for i in item_ids], dtype=np.int64)

    def record_digests(self, indices: np.ndarray, item_ids: Sequence[str]) -> list[bytes]:
        """Digests of the records stored at ``indices`` for the items ``item_ids``."""
        mask, values = self.read(np.asarray(indices, dtype=np.int64))
        return record_digests(self.attrs["store_id"], item_ids, mask, values)

    def finish(self) -> None:
        self.group.attrs["complete"] = True
        self.attrs["complete"] = True
        self.consolidate()

    def consolidate(self) -> None:
        with warnings.catch_warnings():
            # Consolidated metadata is a widely read extension (xarray, zarr-python) that
            # saves one request per array when opening from object storage.
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(self.group.store)
