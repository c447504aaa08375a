"""Check a store against its layout; report every violation, not just the first."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from imambig.errors import StorageUnavailableError
from storage_schemas.layout import Layout
from storage_schemas.registry import layout_for

if TYPE_CHECKING:
    from imambig.stores.location import Location


@dataclass
class ValidationReport:
    url: str
    schema: str | None = None
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        head = f"{self.url}: {self.schema or 'unknown layout'}"
        if self.ok:
            return f"{head}: valid"
        return "\n".join([f"{head}: {len(self.violations)} violation(s)",
                          *(f"  - {v}" for v in self.violations)])


def _dtype_ok(arr: zarr.Array, want: str) -> bool:
    if want == "str":
        return arr.dtype.kind in ("U", "T", "O") or str(arr.dtype) in ("str", "string")
    return np.dtype(arr.dtype) == np.dtype(want)


def validate_group(group: zarr.Group, url: str = "") -> ValidationReport:
    attrs: dict[str, Any] = dict(group.attrs)
    report = ValidationReport(url=url, schema=attrs.get("schema"))
    try:
        layout = layout_for(report.schema)
    except ValueError as exc:
        report.violations.append(str(exc))
        return report
    missing = [a for a in layout.required_attrs if a not in attrs]
    report.violations += [f"missing attribute {a!r}" for a in missing]
    if attrs.get("complete") is not True:
        report.violations.append("store is not marked complete (an interrupted write?)")
    if missing:
        return report  # shapes cannot be derived without the attributes
    for spec in layout.arrays:
        if spec.name not in group:
            report.violations.append(f"missing array {spec.name!r}")
            continue
        arr = group[spec.name]
        want = layout.shape(spec.name, attrs)
        if tuple(arr.shape) != want:
            report.violations.append(f"array {spec.name!r} has shape {tuple(arr.shape)}, "
                                     f"expected {want}")
        if not _dtype_ok(arr, spec.dtype):
            report.violations.append(f"array {spec.name!r} has dtype {arr.dtype}, "
                                     f"expected {spec.dtype}")
    if not report.violations:  # a store that claims more chunks than it holds
        report.violations += _unwritten_chunks(group, layout)
    if not report.violations:  # semantic checks assume the structure is right
        for check in layout.checks:
            try:
                report.violations += check(group)
            except StorageUnavailableError:
                raise
            except Exception as exc:  # a refused or undecodable chunk is itself the finding
                report.violations.append(f"{check.__name__.strip('_')}: {exc}")
    return report


def _unwritten_chunks(group: zarr.Group, layout: Layout) -> list[str]:
    """Arrays whose chunks are fewer than their shape needs, counted from a listing
    before any chunk is read: an unwritten chunk reads back as its fill value, and an
    item count raised by the provider would otherwise be read chunk by missing chunk.
    Arrays whose chunks can all be fill (support, values) are not counted."""
    problems = []
    for spec in layout.arrays:
        arr = group[spec.name]
        if spec.dtype != "str" or arr.ndim != 1:
            continue  # string ids are never empty: every written chunk exists
        need = -(-arr.shape[0] // arr.chunks[0])
        have = sum(1 for _ in _keys(group, f"{spec.name}/c/"))
        if have < need:
            problems.append(f"array {spec.name!r} has {have} of its {need} chunks "
                            "(never written, or the item count was raised)")
    return problems


def _keys(group: zarr.Group, prefix: str) -> list[str]:
    """Keys under ``prefix`` in the group's store."""
    from zarr.core.sync import sync

    async def collect() -> list[str]:
        return [k async for k in group.store.list_prefix(prefix)]

    return sync(collect())


def _guard(group: zarr.Group) -> None:
    """Register each array's chunk limit with the store's guard (``imambig``'s
    ``ChunkGuard``), so no chunk decodes past its array's own size."""
    store = group.store
    if not hasattr(store, "register"):
        return
    from imambig.stores.chunk_guard import ChunkLimit

    for name, arr in group.arrays():
        # An array whose metadata gives no limit stays unregistered: the strict guard
        # then refuses its chunks, and the layout checks report it.
        with contextlib.suppress(ValueError, KeyError, TypeError):
            store.register(name, ChunkLimit.of(arr.metadata.to_dict(), max_string_bytes=1024))


def validate(location: Location) -> ValidationReport:
    try:
        group = zarr.open_group(location.zarr_store(mode="r", strict=True), mode="r")
        _guard(group)
    except StorageUnavailableError:
        raise  # the storage did not answer: that says nothing about the store
    except Exception as exc:  # any other failure to open is itself the finding
        return ValidationReport(url=location.url,
                                violations=[f"cannot open a Zarr group: {exc}"])
    return validate_group(group, location.url)
