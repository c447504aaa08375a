"""Image store v1: equally sized uint8 RGB images with ids, splits and identities."""

from __future__ import annotations

import numpy as np
import zarr

from storage_schemas.layout import ArraySpec, Layout

SCHEMA = "imambig.image-store/1"


def _ids_unique(group: zarr.Group) -> list[str]:
    ids = np.asarray(group["item_id"][:])
    problems = []
    if len(ids) and (ids == "").any():
        problems.append(f"{int((ids == '').sum())} items have an empty item_id")
    if len(np.unique(ids)) != len(ids):
        problems.append("item_id values are not unique")
    return problems


def _splits_valid(group: zarr.Group) -> list[str]:
    split = np.asarray(group["split"][:])
    bad = int((split > 2).sum())
    return [f"{bad} items have a split code outside 0..2"] if bad else []


LAYOUT = Layout(
    schema=SCHEMA,
    arrays=(
        ArraySpec("images", "uint8", ("item", "y", "x", "channel"), "RGB pixels"),
        ArraySpec("item_id", "str", ("item",), "path relative to the source root"),
        ArraySpec("split", "uint8", ("item",), "0 train, 1 val, 2 test"),
        ArraySpec("identity", "int64", ("item",), "person shown; -1 unknown"),
    ),
    required_attrs=("schema", "height", "width", "n_items", "split_names", "complete"),
    dim_sizes={
        "item": lambda a: a["n_items"],
        "y": lambda a: a["height"],
        "x": lambda a: a["width"],
        "channel": lambda a: 3,
    },
    checks=(_ids_unique, _splits_valid),
    doc="storage_schemas/docs/image_store_v1.md",
)
