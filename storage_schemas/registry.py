"""All known layouts, by schema string."""

from __future__ import annotations

from storage_schemas import (
    image_store_v1,
    image_store_v2,
    keystore_v1,
    keystore_v2,
    public_store_v1,
    public_store_v2,
)
from storage_schemas.layout import Layout

LAYOUTS: dict[str, Layout] = {
    m.LAYOUT.schema: m.LAYOUT
    for m in (image_store_v1, image_store_v2, public_store_v1, public_store_v2, keystore_v1,
              keystore_v2)
}


def layout_for(schema: str | None) -> Layout:
    if schema not in LAYOUTS:
        raise ValueError(f"unknown store schema {schema!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[schema]
