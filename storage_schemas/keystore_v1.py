"""Keystore v1: per-item keys, sealed chunk by chunk with AES-256-GCM.

Row ``c`` of ``sealed`` holds the keys of items ``c*chunk_items ...`` concatenated
(the last row zero-padded), encrypted under the store's data key with associated data
binding it to (store id, array, row, schema). The data key itself is stored only
wrapped by the key provider; the master key never lives beside the keys.
"""

from __future__ import annotations

import math

import numpy as np
import zarr

from storage_schemas.layout import ArraySpec, Layout

SCHEMA = "imambig.keystore/1"
SEAL_OVERHEAD = 12 + 16  # AES-GCM nonce + tag


def sealed_row_bytes(chunk_items: int, key_bytes: int) -> int:
    return chunk_items * key_bytes + SEAL_OVERHEAD


def _rows_written(group: zarr.Group) -> list[str]:
    sealed = group["sealed"]
    empty = [r for r in range(sealed.shape[0]) if not np.asarray(sealed[r]).any()]
    if empty:
        return [f"{len(empty)} keystore rows were never written, first: {empty[:5]}"]
    return []


LAYOUT = Layout(
    schema=SCHEMA,
    arrays=(
        ArraySpec("sealed", "uint8", ("row", "sealed_byte"),
                  "nonce || AES-256-GCM(keys of one chunk of items) || tag"),
    ),
    required_attrs=("schema", "store_id", "public_store_id", "model_id", "n_items",
                    "chunk_items", "n_maps", "k", "k_public", "key_bytes",
                    "key_provider", "wrapped_data_key", "complete"),
    dim_sizes={
        "row": lambda a: math.ceil(a["n_items"] / a["chunk_items"]),
        "sealed_byte": lambda a: sealed_row_bytes(a["chunk_items"], a["key_bytes"]),
    },
    checks=(_rows_written,),
    doc="storage_schemas/docs/keystore_v1.md",
)
