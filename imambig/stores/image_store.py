"""The image store: a Zarr v3 group of equally sized uint8 RGB images and their labels.

Layout (schema ``imambig.image-store/1``), N items of H x W pixels:

- ``images``   (N, H, W, 3) uint8, chunks (chunk_items, H, W, 3), zstd
- ``item_id``  (N,) UTF-8 strings: the item's path relative to the source root
- ``split``    (N,) uint8: 0 train, 1 val, 2 test
- ``identity`` (N,) int64: the person shown, -1 when unknown
- group attributes: ``schema``, ``height``, ``width``, ``n_items``, ``split_spec``,
  ``seed``, ``crop``, ``source``, ``set_aside``, ``created``, ``split_names`` and
  ``complete``.

Writing: ``ImageStoreWriter.create`` lays out every array at its full size first;
image regions are then written chunk-aligned (so independent workers can each write
their own regions, reopening the store with ``ImageStoreWriter.open``), and only
``finish`` sets ``complete: true``. Readers refuse stores without it.

Appending (``ImageStoreWriter.begin_append``): the store is marked incomplete with
``append_from`` (its item count before), grown, written from there on by one writer,
and finished again; an append that dies is cut back to ``append_from`` by the next.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from imambig.errors import FormatError
from imambig.stores.location import Location
from imambig.stores.splits import SPLIT_NAMES, UNKNOWN_IDENTITY, split_code
from imambig.untrusted import JSON_LIMIT, parse_json
from storage_schemas import image_store_v1, image_store_v2

SCHEMA = image_store_v2.SCHEMA  # what is written
READABLE = (image_store_v1.SCHEMA, SCHEMA)
LABELS = ("item_id", "split", "identity", "source_digest")
FORGOTTEN = "forgotten:"  # item id prefix of a forgotten item (imambig.stages.forget)


def forgotten_id(name: str) -> str:
    """The id a forgotten item keeps: its name is gone, the name's hash stays so that
    an append recognises it."""
    return FORGOTTEN + hashlib.sha256(name.encode()).hexdigest()

# Plain zstd rather than Blosc: Blosc's gain over zstd comes from byte shuffling, which
# does nothing for 1-byte pixels, and plain zstd is the simplest codec every Zarr v3
# reader supports. Level 3 is zstd's own default: a fair ratio at fast encode speed.
IMAGE_CODEC = ZstdCodec(level=3)

StoreState = Literal["absent", "complete", "incomplete", "foreign"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def store_state(location: Location) -> StoreState:
    """What is at ``location``: nothing, a complete or incomplete image store, or other
    data."""
    fs, path = location.filesystem()
    if not fs.exists(path):
        return "absent"
    if not fs.isdir(path):
        return "foreign"
    meta_path = f"{path}/zarr.json"
    if not fs.exists(meta_path):
        return "absent" if not fs.ls(path, detail=False) else "foreign"
    try:
        # At most JSON_LIMIT + 1 bytes: whatever is at the location may be anybody's.
        raw = fs.cat_file(meta_path, start=0, end=JSON_LIMIT + 1)
        doc = parse_json(raw, f"{location}/zarr.json")
    except (FormatError, OSError):
        return "foreign"
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict) or attrs.get("schema") not in READABLE:
        return "foreign"
    return "complete" if attrs.get("complete") is True else "incomplete"


class _ImagesArray:
    """What the shape of a store's ``images`` array (items, height, width, 3) says."""

    images: zarr.Array

    @property
    def n_items(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def chunk_items(self) -> int:
        return int(self.images.chunks[0])


class ImageStoreWriter(_ImagesArray):
    """Writes one image store; see the module docstring for the write order."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.images: zarr.Array = group["images"]  # type: ignore[assignment]

    @classmethod
    def create(
        cls,
        location: Location,
        *,
        n_items: int,
        height: int,
        width: int,
        chunk_items: int,
        attrs: dict[str, Any] | None = None,
    ) -> ImageStoreWriter:
        """Lay out an empty store of ``n_items`` at ``location``, replacing what is there."""
        if min(height, width, chunk_items) < 1 or n_items < 0:
            raise ValueError("height, width and chunk_items must be positive, n_items >= 0")
        group = zarr.open_group(
            location.zarr_store(mode="w"),
            mode="w",
            attributes={
                **(attrs or {}),
                "schema": SCHEMA,
                "height": height,
                "width": width,
                "n_items": n_items,
                "split_names": list(SPLIT_NAMES),
                "created": _now(),
                "complete": False,
            },
        )
        group.create_array(
            "images", shape=(n_items, height, width, 3), dtype="uint8",
            chunks=(chunk_items, height, width, 3), compressors=IMAGE_CODEC, fill_value=0,
            dimension_names=("item", "y", "x", "channel"),
        )
        group.create_array(
            "item_id", shape=(n_items,), dtype=str, chunks=(chunk_items,),
            dimension_names=("item",),
        )
        group.create_array(
            "split", shape=(n_items,), dtype="uint8", chunks=(chunk_items,),
            compressors=ZstdCodec(level=3), fill_value=0, dimension_names=("item",),
        )
        group.create_array(
            "identity", shape=(n_items,), dtype="int64", chunks=(chunk_items,),
            compressors=ZstdCodec(level=3), fill_value=UNKNOWN_IDENTITY,
            dimension_names=("item",),
        )
        group.create_array(
            "source_digest", shape=(n_items,), dtype=str, chunks=(chunk_items,),
            dimension_names=("item",),
        )
        return cls(group)

    @classmethod
    def open(cls, location: Location) -> ImageStoreWriter:
        """Reopen a store laid out by ``create`` to write more regions into it."""
        group = zarr.open_group(location.zarr_store(mode="r+"), mode="r+")
        schema = group.attrs.get("schema")
        if schema == image_store_v1.SCHEMA:
            raise ValueError(f"{location} is an image store of {schema}, which holds no source "
                             "digests and cannot be added to; re-ingest it once with "
                             "--overwrite")
        if schema != SCHEMA:
            raise ValueError(f"{location} is not an image store (schema {SCHEMA})")
        return cls(group)

    def begin_append(self) -> int:
        """Mark the store as being appended to; returns the item count appends start at.
        A store left so by an append that died is first cut back to where it began."""
        start = self.group.attrs.get("append_from")
        if start is None:
            start = self.n_items
            self.group.attrs.update({"append_from": start, "complete": False})
        elif self.n_items != start:
            self.resize(int(start))
        return int(start)

    def write_images(self, start: int, images: np.ndarray) -> None:
        """Write ``images`` (B, H, W, 3) uint8 at items ``start:start+B``.

        The region must cover whole chunks (it may end at ``n_items``), so that concurrent
        writers never touch the same chunk.
        """
        stop = start + len(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.images.shape[1:]:
            raise ValueError(
                f"expected uint8 images of shape (B, *{self.images.shape[1:]}), "
                f"got {images.dtype} {images.shape}"
            )
        if start % self.chunk_items or (stop % self.chunk_items and stop != self.n_items):
            raise ValueError(
                f"region {start}:{stop} is not aligned to chunks of {self.chunk_items} items"
            )
        if stop > self.n_items:
            raise ValueError(f"region {start}:{stop} exceeds the store's {self.n_items} items")
        self.images[start:stop] = images

    def resize(self, n_items: int) -> None:
        """Change the item count of every array (dropping items beyond ``n_items``)."""
        for name in ("images", *LABELS):
            arr: zarr.Array = self.group[name]  # type: ignore[assignment]
            arr.resize((n_items, *arr.shape[1:]))
        self.images = self.group["images"]  # type: ignore[assignment]  # fresh metadata
        self.group.attrs["n_items"] = n_items

    def write_tail(self, start: int, images: np.ndarray) -> None:
        """Write ``images`` at items ``start:start+B`` where the region may begin inside a
        chunk (an append's first chunk): for the one writer of an append only."""
        if images.dtype != np.uint8 or images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"expected uint8 images of shape (B, *{self.images.shape[1:]})")
        if start + len(images) > self.n_items:
            raise ValueError(f"region exceeds the store's {self.n_items} items")
        self.images[start : start + len(images)] = images

    def write_labels(self, item_ids: np.ndarray, splits: np.ndarray, identities: np.ndarray,
                     digests: np.ndarray, start: int = 0) -> None:
        """Write the per-item labels of items ``start:`` (to the end of the store)."""
        n = self.n_items - start
        columns = (("item_id", item_ids, str), ("split", splits, np.uint8),
                   ("identity", identities, np.int64), ("source_digest", digests, str))
        for name, values, _ in columns:
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} items")
        if n:
            for name, values, dtype in columns:
                self.group[name][start:] = np.asarray(values, dtype=dtype)

    def finish(self, **attrs: Any) -> None:
        """Record final attributes and mark the store complete (call last)."""
        self.group.attrs.update({**attrs, "n_items": self.n_items, "complete": True})
        if "append_from" in self.group.attrs:
            del self.group.attrs["append_from"]


class ImageStore(_ImagesArray):
    """Read view of a complete image store. Picklable: workers reopen it lazily."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._open()

    def _open(self) -> None:
        try:
            group = zarr.open_group(self.location.zarr_store(mode="r"), mode="r")
        except FileNotFoundError:
            raise FileNotFoundError(f"no image store at {self.location}") from None
        attrs = group.attrs.asdict()
        if attrs.get("schema") not in READABLE:
            raise ValueError(f"{self.location} is not an image store (expected schema {SCHEMA})")
        if attrs.get("complete") is not True:
            raise ValueError(
                f"image store {self.location} was not completely written; re-run ingest to finish it"
            )
        self._group = group
        self._attrs = attrs
        self.images: zarr.Array = group["images"]  # type: ignore[assignment]
        self._labels: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location = state["location"]
        self._open()

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return f"ImageStore({self.location.url!r}, n_items={self.n_items}, {self.height}x{self.width})"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    def read(self, selection: slice | int | np.ndarray | list[int]) -> np.ndarray:
        """Images (B, H, W, 3) uint8 of a slice or of an array of item indices.

        An index array is served chunk by chunk: each touched chunk is decoded once,
        whatever the order or repetition of the indices. An int gives a batch of one.
        """
        n = self.n_items
        if isinstance(selection, slice):
            start, stop, step = selection.indices(n)
            if step == 1:
                return np.asarray(self.images[start:stop])
            selection = np.arange(start, stop, step)
        idx = np.asarray(selection)
        if idx.ndim == 0:
            idx = idx.reshape(1)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise TypeError("read() takes a slice, an int or a 1-D array of item indices")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"item index out of range for {n} items")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, self.height, self.width, 3), dtype=np.uint8)
        if idx.size == 0:
            return out
        # One contiguous read per touched chunk (from its first to its last wanted item).
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        chunk_of = sorted_idx // self.chunk_items
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for part in np.split(np.arange(sorted_idx.size), bounds):
            lo, hi = int(sorted_idx[part[0]]), int(sorted_idx[part[-1]]) + 1
            block = np.asarray(self.images[lo:hi])
            out[order[part]] = block[sorted_idx[part] - lo]
        return out

    def _label(self, name: str) -> np.ndarray:
        # Labels are small (a few MB for millions of items): read once, keep.
        if name not in self._labels:
            self._labels[name] = np.asarray(self._group[name][:])
        return self._labels[name]

    def item_ids(self) -> np.ndarray:
        """Item ids (relative source paths) as an array of str."""
        # Zarr hands out numpy's variable-width StringDType; callers get plain '<U' strings
        # (converted once: a worker asks for them every region).
        if "item_id:str" not in self._labels:
            self._labels["item_id:str"] = np.array(self._label("item_id").tolist(), dtype=str)
        return self._labels["item_id:str"].copy()

    def source_digests(self) -> np.ndarray | None:
        """sha-256 (hex) of each item's source file; None for a v1 store."""
        if "source_digest" not in self._group:
            return None
        return np.array(self._label("source_digest").tolist(), dtype=str)

    def splits(self) -> np.ndarray:
        """Split code per item: 0 train, 1 val, 2 test (uint8)."""
        return self._label("split").astype(np.uint8)

    def identities(self) -> np.ndarray:
        """Identity per item (int64, -1 unknown)."""
        return self._label("identity").astype(np.int64)

    def forgotten(self) -> np.ndarray:
        """Whether each item was forgotten (``imambig forget``): its pixels are zero."""
        return np.char.startswith(self.item_ids(), FORGOTTEN)

    def indices(self, split: str) -> np.ndarray:
        """Item indices (int64, ascending) of ``"train"``, ``"val"``, ``"test"`` or ``"all"``,
        forgotten items left out."""
        keep = ~self.forgotten()
        if split != "all":
            keep &= self.splits() == split_code(split)
        return np.flatnonzero(keep).astype(np.int64)


def open_image_store(location: Location) -> ImageStore:
    """Open the complete image store at ``location`` for reading."""
    return ImageStore(location)
