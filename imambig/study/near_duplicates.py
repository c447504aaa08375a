"""Near-duplicates of stored images, made the way they arise in real collections.

A near-duplicate is the same photo after an everyday transformation (re-saved as JPEG,
resized, shifted or cropped by a few pixels) and then ingested like any other file, so
the transformation is applied to the *source* photo and the result goes through the
image store's own crop and resize. When the sources are not reachable, the stored image
stands in for its source (an approximation: JPEG and shifts then act at the stored
size, where nothing averages them away).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from imambig.config import IngestConfig
from imambig.stages.ingest import DecodeParams, decode_image, discover_source
from imambig.stores.image_store import ImageStore
from imambig.stores.location import Location

# Name -> what happens to the source photo.
VARIANTS: dict[str, str] = {
    "copy": "the same file under another item id",
    "jpeg90": "re-saved as JPEG, quality 90",
    "jpeg75": "re-saved as JPEG, quality 75",
    "resize+5": "enlarged by 5 %",
    "resize-5": "shrunk by 5 %",
    "shift2": "content shifted 2 pixels right and down (edges repeated)",
    "crop2": "2 pixels cropped from every side",
}


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def transform(data: bytes, variant: str) -> bytes:
    """The bytes of ``variant`` of the image file ``data``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown near-duplicate {variant!r}; choose from {list(VARIANTS)}")
    if variant == "copy":
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if variant.startswith("jpeg"):
        return _jpeg(img, int(variant[4:]))
    if variant.startswith("resize"):
        f = 1.05 if variant == "resize+5" else 0.95
        img = img.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS)
    elif variant == "shift2":
        a = np.pad(np.asarray(img), ((2, 0), (2, 0), (0, 0)), mode="edge")[:h, :w]
        img = Image.fromarray(a)
    else:  # crop2
        img = img.crop((2, 2, w - 2, h - 2))
    return _jpeg(img, 95)  # a high-quality save, as an editor would write it


class NearDuplicates:
    """Near-duplicates of the items of one image store."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        a, d = store.attrs, IngestConfig()
        self.params = DecodeParams(store.height, store.width, a.get("crop"), d.min_side,
                                   d.max_pixels)
        self._paths: dict[str, str] | None = None
        self._fs = None
        try:
            source = discover_source(Location(a["source"]))
            self._fs = source.fs
            self._paths = {e.item_id: e.path for e in source.entries if e.path}
        except (KeyError, OSError, ValueError):
            pass  # no reachable sources: stored images stand in

    @property
    def from_sources(self) -> bool:
        return bool(self._paths)

    def source_bytes(self, index: int) -> bytes:
        item = str(self.store.item_ids()[index])
        if self._paths and item in self._paths and self._fs is not None:
            return self._fs.cat_file(self._paths[item])
        buf = io.BytesIO()
        Image.fromarray(self.store.read(index)[0]).save(buf, "PNG")  # read(int): a batch of one
        return buf.getvalue()

    def images(self, indices: np.ndarray, variant: str) -> np.ndarray:
        """(B, H, W, 3) uint8 near-duplicates of items ``indices``."""
        return np.stack([decode_image(transform(self.source_bytes(int(i)), variant),
                                      self.params) for i in indices])
