"""Authorized reconstructions at honest rates, the codec baselines at the same bytes, and
rate-distortion curves across k and value precision.

Every rate is bytes actually produced, x 8 / (H x W):

- *key + true values*: the key (which public entries are real) plus the true values
  compressed as the public store compresses them. The positions come from the public
  record, so this is the extra an authorized user fetches.
- *standalone*: what a plain codec built from the same network would store: the true
  support coded on its own (a subset rank over all m positions, the same coder as the
  keys) plus the true values. Codecs are matched against this, the larger budget.

Value precision p keeps p of float16's 10 mantissa bits (rounded); fewer bits compress
better under the store's byte-shuffling zstd.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numcodecs import Blosc

from imambig.evaluation.codecs import CODECS, at_budget, at_quality
from imambig.evaluation.metrics import ms_ssim, psnr_uint8, ssim, to_uint8
from imambig.mechanism.keys import key_bytes, lower_fidelity
from imambig.mechanism.quantizer import FULL_MANTISSA, round_mantissa
from imambig.mechanism.record import Ambiguated, scatter_code
from imambig.model.autoencoder import SparseAutoencoder

VALUE_CODEC = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)  # as the public store
RD_K_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
RD_PRECISIONS = (10, 6, 3)
RD_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass
class Row:
    """One setting of the Table-1 style result: quality and per-image bytes."""

    name: str
    psnr: float
    ssim: float
    ms_ssim: float
    bytes_per_image: float | None
    bpp: float | None
    notes: str = ""


def value_bytes(values: np.ndarray) -> int:
    """Compressed size of one image's kept values (float16, in position order)."""
    return len(VALUE_CODEC.encode(np.ascontiguousarray(values, dtype=np.float16)))


def quality(model: SparseAutoencoder, code: torch.Tensor, images: torch.Tensor,
            batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image PSNR, SSIM and MS-SSIM (8-bit) of decoding ``code``."""
    out = []
    with torch.no_grad():
        for s in range(0, len(code), batch):
            a = to_uint8(model.decode(code[s : s + batch]))
            b = to_uint8(images[s : s + batch])
            out.append((psnr_uint8(a, b), ssim(a, b), ms_ssim(a, b)))
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))  # type: ignore[return-value]


def authorized(model: SparseAutoencoder, amb: Ambiguated, images: torch.Tensor, k_low: int,
               precision: int = FULL_MANTISSA, order: np.ndarray | None = None,
               label: str = "authorized") -> tuple[Row, Row]:
    """(key + true values, standalone) rows for ``k_low`` true entries per map: the
    largest, or those of highest ``order`` (a lower-fidelity grant's random choice)."""
    amb = amb.opened()
    keep = lower_fidelity(amb.real, amb.values if order is None else order, k_low)
    values = round_mantissa(amb.values, precision)
    code = scatter_code(amb.mask, np.where(keep, values, 0))
    p, s, ms = quality(model, code, images)
    hw = images.shape[2] * images.shape[3]
    # Keys are fixed-length for a shape (tests check len(encode_key) == key_bytes), so
    # their size is known without coding each image's subset again.
    n_maps, kp = amb.real.shape[1:]
    vb = np.array([value_bytes(values[i][keep[i]]) for i in range(len(keep))])
    key_b = vb + key_bytes(n_maps, kp, k_low)
    alone_b = vb + key_bytes(n_maps, amb.mask.shape[-1], k_low)
    name = f"{label} k={k_low}" + ("" if precision >= FULL_MANTISSA else f", {precision}-bit mantissa")
    rows = []
    for label, b in (("key + true values", key_b), ("standalone", alone_b)):
        mb = float(np.mean(b))
        rows.append(Row(name, float(p.mean()), float(s.mean()), float(ms.mean()), mb,
                        mb * 8 / hw, label))
    return rows[0], rows[1]


def _hwc(images: torch.Tensor) -> np.ndarray:
    return to_uint8(images).permute(0, 2, 3, 1).contiguous().numpy()


def _codec_quality(ref: np.ndarray, decoded: np.ndarray,
                   psnr_only: bool = False) -> tuple[float, float, float]:
    a = torch.from_numpy(decoded).permute(0, 3, 1, 2)
    b = torch.from_numpy(ref).permute(0, 3, 1, 2)
    p = float(psnr_uint8(a, b).mean())
    if psnr_only:
        return p, float("nan"), float("nan")
    return p, float(ssim(a, b).mean()), float(ms_ssim(a, b).mean())


def codec_at_bytes(images: torch.Tensor, codec: str, budgets: Sequence[float]) -> Row:
    """Each image at the best quality that fits its budget (``budgets[i]`` bytes)."""
    ref = _hwc(images)
    coded = [at_budget(im, codec, b) for im, b in zip(ref, budgets, strict=True)]
    p, s, ms = _codec_quality(ref, np.stack([c.image for c in coded]))
    mb = float(np.mean([c.n_bytes for c in coded]))
    over = sum(not c.fits for c in coded)
    notes = f"matched per image to {np.mean(budgets):.0f} B" + (
        f"; {over} over budget at the lowest quality" if over else "")
    return Row(codec.upper(), p, s, ms, mb, mb * 8 / (ref.shape[1] * ref.shape[2]), notes)


def codec_curve(images: torch.Tensor, codec: str,
                qualities: Sequence[int] = RD_QUALITIES) -> list[tuple[float, float]]:
    """(bpp, PSNR) at fixed quality settings, averaged over the images."""
    ref = _hwc(images)
    hw = ref.shape[1] * ref.shape[2]
    points = []
    for q in qualities:
        coded = [at_quality(im, codec, q) for im in ref]
        p, _, _ = _codec_quality(ref, np.stack([c.image for c in coded]), psnr_only=True)
        points.append((float(np.mean([c.n_bytes for c in coded])) * 8 / hw, p))
    return points


def our_curves(model: SparseAutoencoder, amb: Ambiguated, images: torch.Tensor,
               fractions: Sequence[float] = RD_K_FRACTIONS,
               precisions: Sequence[int] = RD_PRECISIONS) -> dict[str, list[tuple[float, float]]]:
    """Standalone (bpp, PSNR) across k_low for each value precision."""
    amb = amb.opened()  # once, not per point
    k = int(amb.real.sum(-1).min())
    curves = {}
    for prec in precisions:
        pts = []
        for f in fractions:
            _, alone = authorized(model, amb, images, max(1, round(k * f)), prec)
            pts.append((alone.bpp, alone.psnr))
        curves[f"ours, {prec}-bit mantissa"] = pts
    return curves


def plot_rd(curves: dict[str, list[tuple[float, float]]], title: str) -> bytes:
    """PNG of PSNR against bits per pixel."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, pts in curves.items():
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(xs, ys, marker="o" if name.startswith("ours") else ".", label=name)
    ax.set_xlabel("bits per pixel (bytes stored x 8 / (H x W))")
    ax.set_ylabel("PSNR (dB, 8-bit RGB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tight), closed after."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


__all__ = ["CODECS", "Row", "authorized", "codec_at_bytes", "codec_curve", "our_curves",
           "plot_rd", "round_mantissa", "value_bytes"]
