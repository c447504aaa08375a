"""The public store: ambiguated codes laid out by ``storage_schemas.public_store_v1``.

Readable with plain ``zarr`` or ``xarray.open_zarr`` (no imambig needed): ``support``
is ``np.packbits`` of the public positions, ``values`` the float16 values in position
order. Writers lay out the whole store first (``create``), then fill chunk-aligned
regions, possibly from many processes, and ``finish`` marks it complete.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from imambig.stores.location import Location, Mode
from storage_schemas import public_store_v1

SCHEMA = public_store_v1.SCHEMA
# Support bits are close to random (k'/m = 1/2 set): compression cannot help, so none.
# float16 values: byte-shuffle puts the exponent bytes together, where zstd finds the
# only redundancy there is (signs and exponents of similar magnitudes).
VALUES_CODEC = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=2)


def public_store_id(model_id: str, k_public: int, source_id: str) -> str:
    """Deterministic id: a rebuilt store gets the same id (and the same bytes)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"imambig/public/{model_id}/{k_public}/{source_id}").hex


def pack_support(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask, axis=-1)


def unpack_support(bits: np.ndarray, code_length: int) -> np.ndarray:
    return np.unpackbits(bits, axis=-1, count=code_length).astype(bool)


class PublicStore:
    """Read and write access to one public store."""

    def __init__(self, group: zarr.Group, location: Location) -> None:
        self.group = group
        self.location = location
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("schema") != SCHEMA:
            raise ValueError(f"{location} is not a public store (schema {SCHEMA})")

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        location: Location,
        *,
        n_items: int,
        chunk_items: int,
        n_maps: int,
        code_length: int,
        k: int,
        k_public: int,
        model_id: str,
        source: str,
        image_size: tuple[int, int],
        noise_fit: dict[str, Any],
    ) -> PublicStore:
        attrs = {
            "schema": SCHEMA,
            "store_id": public_store_id(model_id, k_public, source),
            "model_id": model_id,
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
            "source": source,
            "complete": False,
        }
        group = zarr.open_group(location.zarr_store("w"), mode="w", attributes=attrs)
        layout = public_store_v1.LAYOUT
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
        try:
            # Writers read the live metadata; consolidated metadata is a snapshot for
            # readers, refreshed by ``finish``.
            group = zarr.open_group(location.zarr_store(mode), mode=mode,
                                    use_consolidated=None if mode == "r" else False)
        except FileNotFoundError:
            raise FileNotFoundError(f"no public store at {location}") from None
        return cls(group, location)

    # -- access -----------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        return int(self.attrs["n_items"])

    @property
    def chunk_items(self) -> int:
        return int(self.attrs["chunk_items"])

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
        if isinstance(selection, slice):
            bits = np.asarray(self.group["support"][selection])
            values = np.asarray(self.group["values"][selection])
        else:
            idx = np.asarray(selection, dtype=np.int64)
            bits = np.asarray(self.group["support"].get_orthogonal_selection((idx,)))
            values = np.asarray(self.group["values"].get_orthogonal_selection((idx,)))
        return unpack_support(bits, int(self.attrs["code_length"])), values

    def item_ids(self) -> np.ndarray:
        return np.asarray(self.group["item_id"][:])

    def index_of(self, item_ids: list[str]) -> np.ndarray:
        ids = self.item_ids()
        lookup = {v: i for i, v in enumerate(ids.tolist())}
        missing = [i for i in item_ids if i not in lookup]
        if missing:
            raise ValueError(f"{len(missing)} items are not in {self.location}: {missing[:5]}")
        return np.array([lookup[i] for i in item_ids], dtype=np.int64)

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
