"""Image store v2: v1 plus the digest of each item's source file, so that ingest can
append what it has not seen and report a known name whose file changed."""

from __future__ import annotations

import re

import numpy as np
import zarr

from storage_schemas import image_store_v1
from storage_schemas.layout import ArraySpec, Layout

SCHEMA = "imambig.image-store/2"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def _digests_valid(group: zarr.Group) -> list[str]:
    digests = np.asarray(group["source_digest"][:]).tolist()
    bad = sum(1 for d in digests if not _HEX.match(str(d)))
    return [f"{bad} items have no sha-256 source digest"] if bad else []


LAYOUT = Layout(
    schema=SCHEMA,
    arrays=(
        *image_store_v1.LAYOUT.arrays,
        ArraySpec("source_digest", "str", ("item",), "sha-256 of the source file, hex"),
    ),
    required_attrs=image_store_v1.LAYOUT.required_attrs,
    dim_sizes=image_store_v1.LAYOUT.dim_sizes,
    checks=(*image_store_v1.LAYOUT.checks, _digests_valid),
    doc="storage_schemas/docs/image_store_v2.md",
)
