"""A Zarr store wrapper that checks every chunk's bytes before a codec sees them.

Codecs trust their own headers: numcodecs allocates what a zstd frame, a blosc header or
a vlen-utf8 count claims before Zarr compares anything with the array's shape, so a
2 KB chunk from a storage provider could claim gigabytes. :class:`ChunkGuard` sits
between Zarr and the real store and, for each array registered with its expected chunk
(:func:`ChunkLimit.of`, done by ``array_metadata.check_array`` once the metadata has been
checked):

- fetches at most the largest size an honest chunk can have, plus one byte;
- reads the headers of the allowed codecs (``bytes``, ``blosc``, ``zstd``,
  ``vlen-utf8``) and refuses any claim other than the chunk's own decoded size (or, for
  strings, a bound from the item count and the longest allowed string);
- for vlen strings under zstd, decompresses once (bounded by the checked frame size) to
  check the item count and every length.

Metadata documents are fetched up to a bound too. Anything refused is a
:class:`~imambig.errors.StoreFormatError` naming the chunk. A *strict* guard (public
stores, keystores) also refuses chunks of arrays nobody registered.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
from zarr.abc.store import ByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from imambig.errors import StoreFormatError

METADATA_LIMIT = 1 << 20  # a zarr.json (consolidated too) of imambig's stores is a few KB
_METADATA_NAMES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOSC_HEADER = 16  # c-blosc 1 header; also its largest overhead over the raw bytes
_VLEN_HEADER = 4


@dataclass(frozen=True)
class ChunkLimit:
    """What one chunk of an array may be: its codecs (outermost last) and decoded size.

    ``nbytes`` is the exact decoded size of a fixed-size chunk; for strings (``items``
    set) it is the largest vlen encoding of ``items`` strings of up to
    ``max_string_bytes`` bytes each.
    """

    codecs: tuple[str, ...]
    nbytes: int
    items: int | None = None  # vlen-utf8 chunks: how many strings a chunk holds

    @classmethod
    def of(cls, meta: dict[str, Any], max_string_bytes: int = 64) -> ChunkLimit:
        """The limit of an array with Zarr v3 metadata ``meta`` (already checked)."""
        names = tuple(c["name"] for c in meta["codecs"])
        shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
        n = math.prod(shape)
        if "vlen-utf8" in names:
            return cls(names, _VLEN_HEADER + n * (4 + max_string_bytes), items=n)
        try:
            itemsize = np.dtype(str(meta["data_type"])).itemsize
        except TypeError:
            raise StoreFormatError(f"data type {meta['data_type']} is not read") from None
        return cls(names, n * itemsize)

    @property
    def max_stored(self) -> int:
        """The most bytes an honest chunk of this array occupies in the store."""
        if self.codecs[-1] == "blosc":
            return self.nbytes + _BLOSC_HEADER
        if self.codecs[-1] == "zstd":  # ZSTD_compressBound, with room for the header
            return self.nbytes + (self.nbytes >> 8) + 64 + 18
        return self.nbytes

    def check(self, key: str, data: bytes) -> None:
        """Refuse (``StoreFormatError``) a chunk whose headers claim anything but what
        this array's chunk is."""
        if len(data) > self.max_stored:
            raise StoreFormatError(f"chunk {key} is larger than an honest chunk "
                                   f"({self.max_stored:,} bytes)")
        outer = self.codecs[-1]
        if outer == "blosc":
            _check_blosc(key, data, self.nbytes)
        elif outer == "zstd":
            size = _zstd_content_size(key, data)
            if self.items is None and size != self.nbytes:
                raise StoreFormatError(f"chunk {key} claims {size:,} decoded bytes; its "
                                       f"array's chunks have {self.nbytes:,}")
            if self.items is not None:
                if size > self.nbytes:
                    raise StoreFormatError(f"chunk {key} claims {size:,} decoded bytes, "
                                           f"more than {self.items} strings can take")
                try:
                    plain = numcodecs.Zstd().decode(data)
                except Exception as exc:  # the codec's own error types vary
                    raise StoreFormatError(f"chunk {key} does not decompress "
                                           f"({type(exc).__name__})") from None
                _check_vlen(key, bytes(plain), self.items)
        elif outer == "vlen-utf8":
            _check_vlen(key, data, self.items or 0)
        elif len(data) != self.nbytes:  # "bytes" alone: the raw chunk
            raise StoreFormatError(f"chunk {key} holds {len(data):,} bytes; its array's "
                                   f"chunks have {self.nbytes:,}")


def _check_blosc(key: str, data: bytes, nbytes: int) -> None:
    if len(data) < _BLOSC_HEADER:
        raise StoreFormatError(f"chunk {key} is too short for a blosc header")
    claimed, blocksize, cbytes = struct.unpack_from("<III", data, 4)
    if claimed != nbytes or cbytes != len(data) or not 0 < blocksize <= nbytes:
        raise StoreFormatError(
            f"chunk {key}'s blosc header claims {claimed:,} bytes in {cbytes:,} (blocks of "
            f"{blocksize:,}); the chunk has {nbytes:,} in {len(data):,}")


def _zstd_content_size(key: str, data: bytes) -> int:
    """The decoded size a zstd frame header declares; refused when it declares none
    (the decoder would then grow its buffer as long as the input asks)."""
    if len(data) < 6 or data[:4] != _ZSTD_MAGIC:
        raise StoreFormatError(f"chunk {key} is not a zstd frame")
    fhd = data[4]
    fcs_flag, single_segment, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size_bytes = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if not size_bytes:
        raise StoreFormatError(f"chunk {key}'s zstd frame does not declare its size")
    if len(data) < at + size_bytes:
        raise StoreFormatError(f"chunk {key}'s zstd frame header is truncated")
    size = int.from_bytes(data[at : at + size_bytes], "little")
    return size + 256 if size_bytes == 2 else size


def _check_vlen(key: str, data: bytes, items: int) -> None:
    """numcodecs' vlen-utf8 layout: a uint32 count, then (uint32 length, bytes) each."""
    if len(data) < _VLEN_HEADER or struct.unpack_from("<I", data)[0] != items:
        raise StoreFormatError(f"chunk {key} does not hold {items} strings")
    at = _VLEN_HEADER
    for _ in range(items):
        if at + 4 > len(data):
            raise StoreFormatError(f"chunk {key}'s strings are truncated")
        at += 4 + struct.unpack_from("<I", data, at)[0]
    if at != len(data):
        raise StoreFormatError(f"chunk {key}'s string lengths do not add up")


class ChunkGuard(WrapperStore[Store]):
    """``store`` with every chunk checked against its array's :class:`ChunkLimit`."""

    def __init__(self, store: Store, strict: bool = False,
                 limits: dict[str, ChunkLimit] | None = None) -> None:
        super().__init__(store)
        self.strict = strict
        self.limits: dict[str, ChunkLimit] = {} if limits is None else limits

    def _with_store(self, store: Store) -> ChunkGuard:
        return type(self)(store, self.strict, self.limits)  # one set of limits

    def register(self, array_path: str, limit: ChunkLimit) -> None:
        self.limits[array_path.strip("/")] = limit

    def __repr__(self) -> str:
        return f"ChunkGuard({self._store!r})"

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if key.rsplit("/", 1)[-1] in _METADATA_NAMES:
            return await self._bounded(key, prototype, byte_range, METADATA_LIMIT, None)
        array, sep, _ = key.rpartition("/c/")
        if not sep and key.endswith("/c"):
            array, sep = key[:-2], "/c"
        limit = self.limits.get(array) if sep else None
        if limit is None:
            if self.strict and sep:
                raise StoreFormatError(f"chunk {key} belongs to an array that was not "
                                       "checked; refused")
            return await self._store.get(key, prototype, byte_range)
        return await self._bounded(key, prototype, byte_range, limit.max_stored, limit)

    async def _bounded(self, key: str, prototype: BufferPrototype,
                       byte_range: ByteRequest | None, most: int,
                       limit: ChunkLimit | None) -> Buffer | None:
        if byte_range is not None:  # a partial read is bounded by its own range
            if limit is not None:
                raise StoreFormatError(f"partial read of chunk {key} refused")
            return await self._store.get(key, prototype, byte_range)
        buf = await self._store.get(key, prototype, RangeByteRequest(0, most + 1))
        if buf is None:
            return None
        if len(buf) > most:
            raise StoreFormatError(f"{key} is larger than {most:,} bytes; refused")
        if limit is not None:
            limit.check(key, buf.to_bytes())
        return buf

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        async def one(key: str, prototype: BufferPrototype,
                      byte_range: ByteRequest | None) -> tuple[str, Buffer | None]:
            return key, await self.get(key, prototype, byte_range)

        for got in await asyncio.gather(*(one(*r) for r in requests)):
            yield got
