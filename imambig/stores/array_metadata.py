"""Checking a store's Zarr metadata before reading any chunk of it.

Stores live with providers that are not trusted, so what a reader is about to decode is
checked first: the group opens as Zarr v3 (any parse failure is a
:class:`~imambig.errors.StoreFormatError` naming the store), and each array has exactly
the data type, shape and chunking its attributes imply and only codecs from an allowlist
(a crafted codec could unpickle, or decompress without bound).
"""

from __future__ import annotations

from typing import Any

import zarr

from imambig.errors import StorageUnavailableError, StoreFormatError
from imambig.stores.chunk_guard import ChunkGuard, ChunkLimit
from imambig.stores.location import Location, Mode

# Zarr v3's default: chunk (i, j) of array a is "a/c/i/j", which the guard recognises.
_CHUNK_KEYS = {"name": "default", "configuration": {"separator": "/"}}


def open_group(location: Location, mode: Mode, what: str, **kw: Any) -> zarr.Group:
    """The Zarr group at ``location`` behind a strict :class:`ChunkGuard` (only chunks
    of arrays :func:`check_array` passed are read); ``FileNotFoundError`` when there is
    none, ``StoreFormatError`` for anything that does not parse."""
    try:
        return zarr.open_group(location.zarr_store(mode, strict=True), mode=mode, **kw)
    except FileNotFoundError:
        if not location.join("zarr.json").exists():
            raise FileNotFoundError(f"no {what} at {location}") from None
        raise StoreFormatError(f"{location} is not a readable {what}: its zarr.json does "
                               "not describe a Zarr v3 group") from None
    except StorageUnavailableError:
        raise  # an outage, not a malformed store (which callers may replace)
    except Exception as exc:  # zarr's own parse errors vary by version: one type out
        raise StoreFormatError(f"{location} is not a readable {what}: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None


def check_array(group: zarr.Group, name: str, where: Location, *, dtype: str,
                shape: tuple[int, ...], chunks: tuple[int, ...] | None,
                codecs: tuple[str, ...], max_string_bytes: int = 64) -> zarr.Array:
    """``group[name]`` after checking its metadata; ``StoreFormatError`` otherwise.
    The array's chunk limit is then registered with the group's :class:`ChunkGuard`,
    so each chunk's bytes are checked before a codec decodes them."""
    what = f"{where}: array {name!r}"
    try:
        arr = group[name]
        meta = arr.metadata.to_dict()
    except StorageUnavailableError:
        raise
    except Exception as exc:  # absent, a group, or metadata that does not parse
        raise StoreFormatError(f"{what} is missing or unreadable ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from None
    if not isinstance(arr, zarr.Array) or meta.get("zarr_format") != 3:
        raise StoreFormatError(f"{what} is not a Zarr v3 array")
    names = [c.get("name") if isinstance(c, dict) else None for c in meta.get("codecs", [])]
    if not names or any(n not in codecs for n in names):
        raise StoreFormatError(f"{what} uses codecs {names}; only {list(codecs)} are read")
    if meta.get("storage_transformers"):
        raise StoreFormatError(f"{what} uses storage transformers; none are read")
    got = str(meta.get("data_type"))
    if got != dtype:
        raise StoreFormatError(f"{what} has data type {got}, expected {dtype}")
    if tuple(arr.shape) != shape:
        raise StoreFormatError(f"{what} has shape {tuple(arr.shape)}, expected {shape}")
    if chunks is not None and tuple(arr.chunks) != chunks:
        raise StoreFormatError(f"{what} has chunks {tuple(arr.chunks)}, expected {chunks}")
    if meta.get("chunk_key_encoding") != _CHUNK_KEYS or meta.get("chunk_grid", {}).get(
            "name") != "regular":
        raise StoreFormatError(f"{what} names its chunks in another way than "
                               f"{_CHUNK_KEYS}; refused")
    guard = group.store
    if isinstance(guard, ChunkGuard):
        guard.register(arr.path, ChunkLimit.of(meta, max_string_bytes))
    return arr
