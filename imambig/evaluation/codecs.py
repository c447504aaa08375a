"""Standard codecs as baselines: JPEG, WebP and AVIF through Pillow, at a byte budget.

Each image gets the highest quality whose file fits its budget, found by bisection on
the integer quality setting (the encoders are monotone enough in practice; the search
keeps the best fitting result it has seen). Rates are the real file sizes, headers and
all, since that is what would be stored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, features

CODECS = ("jpeg", "webp", "avif")
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
_OPTIONS = {"jpeg": {"optimize": True}, "webp": {"method": 6}, "avif": {"speed": 6}}
QUALITY_RANGE = (1, 100)


def available(codec: str) -> bool:
    return {"jpeg": lambda: features.check("jpg"), "webp": lambda: features.check("webp"),
            "avif": lambda: features.check("avif")}[codec]()


def compress(image: np.ndarray, codec: str, quality: int) -> bytes:
    """One (H, W, 3) uint8 image -> file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=_PIL_FORMAT[codec], quality=int(quality),
                                **_OPTIONS[codec])
    return buf.getvalue()


def decompress(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@dataclass(frozen=True)
class Coded:
    image: np.ndarray  # (H, W, 3) uint8 decoded
    n_bytes: int
    quality: int  # 0 when even the lowest quality overshoots the budget
    fits: bool


def at_budget(image: np.ndarray, codec: str, budget: float) -> Coded:
    """The best quality whose file has at most ``budget`` bytes (lowest quality, marked
    ``fits=False``, when none does: small budgets can sit below a codec's header cost)."""
    lo, hi = QUALITY_RANGE
    best: tuple[int, bytes] | None = None
    while lo <= hi:
        q = (lo + hi) // 2
        data = compress(image, codec, q)
        if len(data) <= budget:
            best, lo = (q, data), q + 1
        else:
            hi = q - 1
    if best is None:
        data = compress(image, codec, QUALITY_RANGE[0])
        return Coded(decompress(data), len(data), QUALITY_RANGE[0], False)
    return Coded(decompress(best[1]), len(best[1]), best[0], True)


def at_quality(image: np.ndarray, codec: str, quality: int) -> Coded:
    data = compress(image, codec, quality)
    return Coded(decompress(data), len(data), quality, True)
