"""Public store v2: the ambiguated codes, safe to publish, and nothing that names a person.

Per item and code-map: a bitmask of the k' public positions (sorted by construction)
and the k' quantized values in position order. Items are named by opaque ids (a keyed
hash of the source path, computable only with the keystore), and the ingest source is
not recorded. The attribute set is closed, and every size in it is bounded: readers
check them, and the arrays' metadata, before reading a chunk (the store lives with an
untrusted provider).

Changes from v1: ``item_id`` holds opaque ids; the ``source`` attribute is gone;
``version`` names the store version; ``store_id`` binds the version, the noise fit's
digest, the chunking, the source and the owner secret (see ``imambig.stages``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import zarr

from storage_schemas import public_store_v1
from storage_schemas.layout import ArraySpec, Layout
from storage_schemas.public_store_v1 import _support_counts, _values_finite

SCHEMA = "imambig.public-store/2"
QUANTIZERS = ("float16",)
ALLOWED_ATTRS = frozenset({
    "schema", "store_id", "model_id", "version", "n_items", "chunk_items", "n_maps",
    "code_length", "k", "k_public", "quantizer", "image_height", "image_width", "noise_fit",
    "complete",
})
OPAQUE_ID = re.compile(r"[0-9a-f]{32}")
STORE_ID = re.compile(r"[0-9a-f]{32}")
MODEL_ID = re.compile(r"[0-9a-f]{16}")
VERSION = re.compile(r"[A-Za-z0-9._-]{1,200}")

# Bounds on what a reader accepts (far above any real store; the paper: L=20, m=512).
MAX_ITEMS = 1 << 31
MAX_CHUNK_ITEMS = 1 << 16
MAX_MAPS = 4096
MAX_CODE_LENGTH = 1 << 16
MAX_IMAGE_SIDE = 1 << 14

# The codecs each array may name: what imambig writes. Anything else (a codec that
# unpickles, a plugin) is refused before a chunk is decoded.
CODECS: dict[str, tuple[str, ...]] = {
    "support": ("bytes",),
    "values": ("bytes", "blosc", "zstd"),
    "item_id": ("vlen-utf8", "zstd"),
}


def _int_in(attrs: dict[str, Any], name: str, low: int, high: int) -> str | None:
    v = attrs.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        return f"attribute {name!r} must be an integer in {low}..{high}, got {v!r}"
    return None


def attribute_problems(attrs: dict[str, Any]) -> list[str]:
    """Types and bounds of the attributes: what a reader checks before using any."""
    problems = [
        _int_in(attrs, "n_items", 0, MAX_ITEMS),
        _int_in(attrs, "chunk_items", 1, MAX_CHUNK_ITEMS),
        _int_in(attrs, "n_maps", 1, MAX_MAPS),
        _int_in(attrs, "code_length", 8, MAX_CODE_LENGTH),
        _int_in(attrs, "image_height", 1, MAX_IMAGE_SIDE),
        _int_in(attrs, "image_width", 1, MAX_IMAGE_SIDE),
    ]
    m = attrs.get("code_length")
    if isinstance(m, int) and not isinstance(m, bool):
        problems.append(_int_in(attrs, "k_public", 1, m))
        if m % 8:
            problems.append(f"code_length {m} is not a multiple of 8")
        kp = attrs.get("k_public")
        problems.append(_int_in(attrs, "k", 1, kp if isinstance(kp, int) else m))
    for name, pattern in (("store_id", STORE_ID), ("model_id", MODEL_ID), ("version", VERSION)):
        if not isinstance(attrs.get(name), str) or not pattern.fullmatch(attrs[name]):
            problems.append(f"attribute {name!r} is malformed")
    if attrs.get("quantizer") not in QUANTIZERS:
        problems.append(f"unknown quantizer {attrs.get('quantizer')!r}")
    return [p for p in problems if p]


def _closed_attributes(group: zarr.Group) -> list[str]:
    extra = sorted(set(group.attrs) - ALLOWED_ATTRS)
    return [f"unexpected attribute {a!r}: the public store's attributes are a closed set "
            "(it must never carry key material)" for a in extra]


def _no_extra_arrays(group: zarr.Group) -> list[str]:
    return [f"unexpected member {n!r} in the public store" for n in
            sorted(set(group.array_keys()) - set(CODECS))]


def _bounded(group: zarr.Group) -> list[str]:
    return attribute_problems(dict(group.attrs))


def _ids_opaque(group: zarr.Group) -> list[str]:
    ids = np.array(np.asarray(group["item_id"][:]).tolist(), dtype=str)
    named = int(sum(1 for i in ids.tolist() if i and not OPAQUE_ID.fullmatch(i)))
    problems = [f"{named} item ids are not opaque ids (32 hex digits)"] if named else []
    written = ids[ids != ""]
    if len(np.unique(written)) != len(written):
        problems.append("item ids are not unique")
    return problems


_V1 = public_store_v1.LAYOUT
LAYOUT = Layout(
    schema=SCHEMA,
    arrays=(
        _V1.array("support"),  # unchanged
        _V1.array("values"),
        ArraySpec("item_id", "str", ("item",), "opaque id: keyed hash of the source path"),
    ),
    required_attrs=("schema", "store_id", "model_id", "version", "n_items", "chunk_items",
                    "n_maps", "code_length", "k", "k_public", "quantizer", "complete"),
    dim_sizes=_V1.dim_sizes,
    checks=(_bounded, _closed_attributes, _no_extra_arrays, _support_counts, _values_finite,
            _ids_opaque),
    doc="storage_schemas/docs/public_store_v2.md",
)
