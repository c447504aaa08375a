"""Where artefacts live: local paths and fsspec URLs behind one small interface.

A location is either a plain path (``runs/images``) or an fsspec URL with a protocol
(``s3://bucket/prefix``, ``file:///abs/path``, ``memory://x``). ``open_store`` gives the
Zarr store for it, ``filesystem`` the fsspec file system for side files (reports,
checkpoints) and for listing sources.
"""

from __future__ import annotations

from typing import Any, Literal

import fsspec
from fsspec import AbstractFileSystem
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

Mode = Literal["r", "r+", "a", "w", "w-"]


def has_protocol(url: str) -> bool:
    """True for ``proto://...`` URLs, False for plain local paths."""
    return "://" in url


def _options(url: str, storage_options: dict[str, Any] | None, for_zarr: bool = False
             ) -> dict[str, Any]:
    opts = dict(storage_options or {})
    if has_protocol(url) and for_zarr:
        # Zarr drives its file system from its own event loop; a cached fsspec instance
        # bound to another loop (e.g. an s3fs used synchronously before) fails with
        # "attached to a different loop". A fresh instance per store avoids that. Plain
        # synchronous use shares cached instances (and their connection pools).
        opts.setdefault("skip_instance_cache", True)
    return opts


def open_store(
    url: str, storage_options: dict[str, Any] | None = None, mode: Mode = "r"
) -> Store:
    """The Zarr store at ``url``; read-only when ``mode`` is ``"r"``.

    Creating or clearing is left to ``zarr.open_group(store, mode=...)``; ``mode`` here
    only decides whether the store accepts writes.
    """
    read_only = mode == "r"
    if url.startswith("file://"):
        # Zarr's own local store creates parent folders; fsspec's local file system does not.
        url = fsspec.core.strip_protocol(url)
    if has_protocol(url):
        return FsspecStore.from_url(
            url, storage_options=_options(url, storage_options, for_zarr=True),
            read_only=read_only
        )
    return LocalStore(url, read_only=read_only)


def filesystem(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """The synchronous fsspec file system of ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url, **_options(url, storage_options))
    # fsspec shares instances, and with them their directory listings; other processes
    # (Dask workers, another run) write the same stores, so each use starts fresh.
    fs.invalidate_cache()
    return fs, path.rstrip("/") or path


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended, '/'-separated (also for local paths)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write a whole small object. Local files go to a temporary name first and are
    renamed, so a kill never leaves a half-written file; an S3 PUT is atomic already."""
    fs, path = filesystem(url, storage_options)
    if "file" in fs.protocol:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes | None:
    """The object at ``url``, or None when there is none."""
    fs, path = filesystem(url, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None
