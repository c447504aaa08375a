"""Demo images: deterministic, procedurally drawn cartoon faces.

They ship with the project as code, so the demo needs no download and no data with
usage restrictions. Varied enough (skin, hair, eyes, mouth, pose, background) for a
small model to learn something and for privacy to be visible in the grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw_face(rng: np.random.Generator, size: int = 128) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(40, 220, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    cx, cy = size / 2 + rng.normal(0, size * 0.04), size / 2 + rng.normal(0, size * 0.04)
    fw, fh = size * rng.uniform(0.26, 0.34), size * rng.uniform(0.32, 0.4)
    skin = tuple(int(v) for v in rng.integers([150, 100, 70], [255, 210, 180]))
    hair = tuple(int(v) for v in rng.integers(0, 140, 3))
    d.ellipse([cx - fw * 1.08, cy - fh * 1.12, cx + fw * 1.08, cy + fh * 0.4], fill=hair)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    ey, ex = cy - fh * rng.uniform(0.1, 0.25), fw * rng.uniform(0.35, 0.5)
    er = size * rng.uniform(0.025, 0.045)
    iris = tuple(int(v) for v in rng.integers(0, 160, 3))
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - er * 1.6, ey - er, cx + sx * ex + er * 1.6, ey + er],
                  fill="white")
        d.ellipse([cx + sx * ex - er * 0.8, ey - er * 0.8, cx + sx * ex + er * 0.8,
                   ey + er * 0.8], fill=iris)
    my, mw = cy + fh * rng.uniform(0.35, 0.55), fw * rng.uniform(0.3, 0.6)
    lips = tuple(int(v) for v in rng.integers([120, 20, 30], [220, 90, 100]))
    d.chord([cx - mw, my - mw * 0.4, cx + mw, my + mw * 0.5], 0, 180, fill=lips)
    d.line([cx, cy - fh * 0.05, cx - fw * 0.08, cy + fh * 0.2], fill=hair, width=2)
    return img


def write_demo_images(folder: str | Path, n: int = 400, size: int = 128, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        draw_face(rng, size).save(folder / f"face{i:05d}.png")
    return folder
