"""The figure of the paper's Fig. 3: rows of original / authorized / public code decoded
as is / an attacker's reconstruction."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from imambig.evaluation.metrics import to_uint8
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder

COLUMNS = ("original", "authorized", "public as is", "attacker")


def _label(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, gap: int = 4) -> None:
    """Word by word: Pillow's default font has 2-pixel spaces, which read as none."""
    for word in text.split(" "):
        draw.text((x, y), word, fill="black")
        x += draw.textlength(word) + gap


@torch.no_grad()
def comparison_grid(
    model: SparseAutoencoder, images: torch.Tensor, amb: Ambiguated, attacker_real: np.ndarray,
    scale: int = 2,
) -> bytes:
    """PNG bytes: one row per item, the columns of ``COLUMNS``."""
    cols = [images, model.decode(amb.authorized_code()), model.decode(amb.public_code()),
            model.decode(amb.guessed_code(attacker_real))]
    tiles = [to_uint8(c).permute(0, 2, 3, 1).numpy() for c in cols]
    b, h, w, _ = tiles[0].shape
    pad, head = 4, 14
    canvas = Image.new("RGB", (len(cols) * (w * scale + pad) + pad,
                               head + b * (h * scale + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(COLUMNS):
        _label(draw, pad + j * (w * scale + pad), 2, name)
        for i in range(b):
            tile = Image.fromarray(tiles[j][i]).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (pad + j * (w * scale + pad), head + pad + i * (h * scale + pad)))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    return buf.getvalue()
