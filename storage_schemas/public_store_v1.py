"""Public store v1: the ambiguated codes, safe to publish.

Per item and code-map: a bitmask of the k' public positions (sorted by construction)
and the k' quantized values in position order. Nothing here depends on which entries
are real, and nothing here is key material: the attribute set is closed.
"""

from __future__ import annotations

import numpy as np
import zarr

from storage_schemas.layout import ArraySpec, Layout

SCHEMA = "imambig.public-store/1"
QUANTIZERS = ("float16",)
ALLOWED_ATTRS = frozenset({
    "schema", "store_id", "model_id", "n_items", "chunk_items", "n_maps", "code_length",
    "k", "k_public", "quantizer", "image_height", "image_width", "noise_fit",
    "source", "complete",
})


def _closed_attributes(group: zarr.Group) -> list[str]:
    extra = sorted(set(group.attrs) - ALLOWED_ATTRS)
    return [f"unexpected attribute {a!r}: the public store's attributes are a closed set "
            "(it must never carry key material)" for a in extra]


def _no_extra_arrays(group: zarr.Group) -> list[str]:
    names = {"support", "values", "item_id"}
    return [f"unexpected member {n!r} in the public store" for n in
            sorted(set(group.array_keys()) - names)]


def _support_counts(group: zarr.Group) -> list[str]:
    """Every written item has exactly k' public positions per map; an unwritten chunk
    reads back as zeros, so this also finds regions that were never written."""
    attrs = dict(group.attrs)
    kp, n = attrs["k_public"], attrs["n_items"]
    support = group["support"]
    step = support.chunks[0]
    missing, wrong = [], 0
    for s in range(0, n, step):
        bits = np.unpackbits(np.asarray(support[s : s + step]), axis=-1).sum(-1)
        empty = (bits == 0).all(axis=1)
        missing.extend((s + np.flatnonzero(empty)).tolist())
        wrong += int(((bits != kp) & ~empty[:, None]).any(axis=1).sum())
    problems = []
    if missing:
        problems.append(f"{len(missing)} items have no public record (never written), "
                        f"first: {missing[:5]}")
    if wrong:
        problems.append(f"{wrong} items have a map without exactly k'={kp} public entries")
    return problems


def _values_finite(group: zarr.Group) -> list[str]:
    values = group["values"]
    step = values.chunks[0]
    bad = 0
    for s in range(0, values.shape[0], step):
        v = np.asarray(values[s : s + step])
        bad += int((~np.isfinite(v)).sum())
    return [f"{bad} public values are not finite"] if bad else []


LAYOUT = Layout(
    schema=SCHEMA,
    arrays=(
        ArraySpec("support", "uint8", ("item", "map", "support_byte"),
                  "bitmask of the k' public positions (np.packbits over the m positions)"),
        ArraySpec("values", "float16", ("item", "map", "public"),
                  "quantized values of the public positions, in position order"),
        ArraySpec("item_id", "str", ("item",), "the item's id in the image store"),
    ),
    required_attrs=("schema", "store_id", "model_id", "n_items", "chunk_items", "n_maps",
                    "code_length", "k", "k_public", "quantizer", "complete"),
    dim_sizes={
        "item": lambda a: a["n_items"],
        "map": lambda a: a["n_maps"],
        "support_byte": lambda a: a["code_length"] // 8,
        "public": lambda a: a["k_public"],
    },
    checks=(_closed_attributes, _no_extra_arrays, _support_counts, _values_finite),
    doc="storage_schemas/docs/public_store_v1.md",
)
