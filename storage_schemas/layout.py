"""Declarative description of a store layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zarr


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str  # numpy dtype string, or "str" for variable-length UTF-8
    dims: tuple[str, ...]  # dimension names; sizes come from the group attributes
    doc: str = ""


@dataclass(frozen=True)
class Layout:
    schema: str
    arrays: tuple[ArraySpec, ...]
    required_attrs: tuple[str, ...]
    # dimension name -> function of the attributes giving its size
    dim_sizes: dict[str, Callable[[dict[str, Any]], int]]
    # extra semantic checks: (group) -> list of violations
    checks: tuple[Callable[[zarr.Group], list[str]], ...] = field(default=())
    doc: str = ""

    def array(self, name: str) -> ArraySpec:
        return next(a for a in self.arrays if a.name == name)

    def shape(self, name: str, attrs: dict[str, Any]) -> tuple[int, ...]:
        return tuple(self.dim_sizes[d](attrs) for d in self.array(name).dims)
