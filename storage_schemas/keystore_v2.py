"""Keystore v2: per-item keys, each sealed with the item's opaque id and a digest of its
public record; attributes authenticated.

Row ``c`` of ``sealed`` holds the slots of items ``c*chunk_items ...`` (the last row
zero-padded), encrypted under the store's data key with associated data binding it to
(store id, array, row, schema). A slot is ``opaque id (16) || SHA-256 of the item's
public record (32) || key``: whoever holds a row knows which item its key is for and
which public record it decodes, so a storage provider cannot swap either. The data key
is stored only wrapped by the key provider; ``attrs_mac`` (HMAC-SHA256 under a key
derived from the data key, over every other attribute) authenticates the attributes.

Changes from v1: slots instead of bare keys; ``version``, ``slot_bytes`` and
``attrs_mac`` attributes; the store id binds the version and the noise fit.
"""

from __future__ import annotations

from storage_schemas import keystore_v1
from storage_schemas.keystore_v1 import SEAL_OVERHEAD, _rows_written
from storage_schemas.layout import ArraySpec, Layout

SCHEMA = "imambig.keystore/2"
ID_BYTES = 16
DIGEST_BYTES = 32
CODECS: dict[str, tuple[str, ...]] = {"sealed": ("bytes",)}


def slot_bytes(key_bytes: int) -> int:
    return ID_BYTES + DIGEST_BYTES + key_bytes


def sealed_row_bytes(chunk_items: int, key_bytes: int) -> int:
    return chunk_items * slot_bytes(key_bytes) + SEAL_OVERHEAD


LAYOUT = Layout(
    schema=SCHEMA,
    arrays=(
        ArraySpec("sealed", "uint8", ("row", "sealed_byte"),
                  "nonce || AES-256-GCM(slots of one chunk of items) || tag"),
    ),
    required_attrs=("schema", "store_id", "public_store_id", "version", "model_id", "n_items",
                    "chunk_items", "n_maps", "k", "k_public", "key_bytes", "key_provider",
                    "wrapped_data_key", "complete", "attrs_mac"),
    dim_sizes={
        **keystore_v1.LAYOUT.dim_sizes,  # rows as in v1; a row holds slots, not bare keys
        "sealed_byte": lambda a: sealed_row_bytes(a["chunk_items"], a["key_bytes"]),
    },
    checks=(_rows_written,),
    doc="storage_schemas/docs/keystore_v2.md",
)
