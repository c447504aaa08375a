"""Where bytes live: a ``Location`` is a URL plus the fsspec storage options to reach it.

A URL is a plain path (``runs/images``) or an fsspec URL with a protocol
(``s3://bucket/prefix``, ``file:///abs/path``, ``memory://x``). The two always travel
together, so no function takes one without the other. A location is a frozen, hashable
value (like pangeo-forge's ``FSSpecTarget``): it can key a cache, be pickled to a Dask
worker, and be a Prefect flow parameter, given either as a URL string or as
``{"url": ..., "storage_options": {...}}``.

It has the few operations the stores need: ``join``, ``exists``, ``read_bytes``,
``write_bytes``, ``delete``, ``names`` (a listing), ``zarr_store`` and, for anything
else, ``filesystem``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from imambig.errors import FormatError

if TYPE_CHECKING:  # fsspec and zarr load on first use: the command line's --help is quick
    from fsspec import AbstractFileSystem
    from zarr.abc.store import Store

    from imambig.stores.chunk_guard import ChunkGuard

Mode = Literal["r", "r+", "a", "w", "w-"]
# The largest single object imambig reads whole (model files are the largest).
READ_LIMIT = 1 << 30


@dataclass(frozen=True)
class Location:
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"a location needs a URL or path, got {self.url!r}")
        # A private copy: the caller's dict may change, this value must not.
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))

    def __hash__(self) -> int:
        return hash((self.url, json.dumps(self.storage_options, sort_keys=True, default=str)))

    def __str__(self) -> str:
        return self.url

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """As a Prefect parameter: a URL string, or ``{"url", "storage_options"}``.

        Written out rather than derived from the dataclass: pydantic reuses a derived
        schema by reference, which would drop the URL-string form after its first use.
        """
        from pydantic_core import core_schema as cs

        from_url = cs.no_info_after_validator_function(cls, cs.str_schema())
        fields = cs.typed_dict_schema({
            "url": cs.typed_dict_field(cs.str_schema()),
            "storage_options": cs.typed_dict_field(
                cs.dict_schema(cs.str_schema(), cs.any_schema()), required=False),
        }, cls_name="Location")
        from_dict = cs.no_info_after_validator_function(lambda d: cls(**d), fields)
        return cs.json_or_python_schema(
            json_schema=cs.union_schema([from_url, from_dict]),
            python_schema=cs.union_schema([cs.is_instance_schema(cls), from_url, from_dict]),
            serialization=cs.plain_serializer_function_ser_schema(
                lambda loc: {"url": loc.url, "storage_options": loc.storage_options}),
        )

    # -- naming ------------------------------------------------------------------------

    @property
    def has_protocol(self) -> bool:
        """True for ``proto://...`` URLs, False for plain local paths."""
        return "://" in self.url

    @property
    def is_remote(self) -> bool:
        return self.has_protocol and not self.url.startswith("file://")

    @property
    def name(self) -> str:
        """The last path segment (e.g. a store version)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> Location:
        """This location with ``parts`` appended, '/'-separated (also for local paths)."""
        url = "/".join([self.url.rstrip("/"), *(p.strip("/") for p in parts)])
        return Location(url, self.storage_options)

    # -- bytes -------------------------------------------------------------------------

    def _options(self, for_zarr: bool = False) -> dict[str, Any]:
        opts = dict(self.storage_options)
        if self.url.startswith(("s3://", "s3a://")):
            from imambig.stores.retry import s3_options  # s3fs is loaded only for S3

            # Timeouts, and retries within a budget (the storage option "retry").
            opts = s3_options(opts)
        if self.has_protocol and for_zarr:
            # Zarr drives its file system from its own event loop; a cached fsspec
            # instance bound to another loop (e.g. an s3fs used synchronously before)
            # fails with "attached to a different loop". A fresh instance per store
            # avoids that. Plain synchronous use shares cached instances (and their
            # connection pools).
            opts.setdefault("skip_instance_cache", True)
        return opts

    def filesystem(self) -> tuple[AbstractFileSystem, str]:
        """The synchronous fsspec file system and the path inside it."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url, **self._options())
        # fsspec shares instances, and with them their directory listings; other
        # processes (Dask workers, another run) write the same stores, so each use
        # starts fresh.
        fs.invalidate_cache()
        return fs, path.rstrip("/") or path

    def exists(self) -> bool:
        fs, path = self.filesystem()
        return fs.exists(path)

    def read_bytes(self, limit: int = READ_LIMIT) -> bytes | None:
        """The object here, or None when there is none; ``FormatError`` when it holds
        more than ``limit`` bytes (at most ``limit + 1`` are fetched: stores are
        untrusted, an object's size is the writer's choice)."""
        fs, path = self.filesystem()
        try:
            data = fs.cat_file(path, start=0, end=limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise FormatError(f"{self} is larger than {limit:,} bytes; refused")
        return data

    def write_bytes(self, data: bytes) -> None:
        """Write a whole small object. Local files go to a temporary name first and are
        renamed, so a kill never leaves a half-written file; an S3 PUT is atomic already."""
        fs, path = self.filesystem()
        if "file" in fs.protocol:
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp"
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        else:
            fs.pipe_file(path, data)

    def delete(self) -> None:
        """Remove the object or folder here (and all under it); nothing when absent."""
        fs, path = self.filesystem()
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def names(self) -> set[str]:
        """Names directly under this folder; empty when there is none."""
        fs, path = self.filesystem()
        if not fs.exists(path):
            return set()
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}

    # -- zarr --------------------------------------------------------------------------

    def zarr_store(self, mode: Mode = "r", strict: bool = False) -> ChunkGuard:
        """The Zarr store here, behind a :class:`ChunkGuard` (bounded metadata and
        chunk reads; ``strict``: only chunks of arrays registered after their metadata
        was checked); read-only when ``mode`` is ``"r"``.

        Creating or clearing is left to ``zarr.open_group(store, mode=...)``; ``mode``
        here only decides whether the store accepts writes.
        """
        import fsspec
        from zarr.storage import FsspecStore, LocalStore

        from imambig.stores.chunk_guard import ChunkGuard

        read_only = mode == "r"
        url = self.url
        if url.startswith("file://"):
            # Zarr's own local store creates parent folders; fsspec's local file system
            # does not.
            url = fsspec.core.strip_protocol(url)
        if "://" in url:
            store: Store = FsspecStore.from_url(
                url, storage_options=self._options(for_zarr=True), read_only=read_only)
        else:
            store = LocalStore(url, read_only=read_only)
        return ChunkGuard(store, strict=strict)
