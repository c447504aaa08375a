"""Check a store against its layout; report every violation, not just the first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from imambig.errors import StorageUnavailableError
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
    if not report.violations:  # semantic checks assume the structure is right
        for check in layout.checks:
            report.violations += check(group)
    return report


def validate(location: Location) -> ValidationReport:
    try:
        group = zarr.open_group(location.zarr_store(mode="r"), mode="r")
    except StorageUnavailableError:
        raise  # the storage did not answer: that says nothing about the store
    except Exception as exc:  # any other failure to open is itself the finding
        return ValidationReport(url=location.url,
                                violations=[f"cannot open a Zarr group: {exc}"])
    return validate_group(group, location.url)
