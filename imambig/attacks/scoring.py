"""How attacks are judged: support recall, ROC AUC, and the quality of the decoded guess.

Every attack gives one score per public entry, shape (B, L, k'), higher meaning "more
likely real". The guess is the k highest-scoring entries of each map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from imambig.evaluation.metrics import psnr_uint8, ssim, to_uint8
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


def guess_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, L, k') bool: the k highest scores of each map. Ties go to the lower position
    (stable sort), so a constant score is a fixed, label-blind guess."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    guess = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(guess, order, True, axis=-1)
    return guess


def per_map_recall(scores: np.ndarray, real: np.ndarray, k: int) -> np.ndarray:
    """(B, L) recall |guess ∩ real| / k of each map."""
    return (guess_mask(scores, k) & np.asarray(real, bool)).sum(-1) / k


def support_recall(scores: np.ndarray, real: np.ndarray, k: int) -> float:
    """Mean over maps of |guess ∩ real| / k; chance is k / k'."""
    return float(per_map_recall(scores, real, k).mean())


def roc_auc(scores: np.ndarray, real: np.ndarray) -> float:
    """Real-vs-fake ROC AUC over all entries (Mann–Whitney U; ties count one half)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(real, bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both real and fake entries")
    ranks = rankdata(s)  # average ranks: ties contribute 1/2 each
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def guessed_code(amb: Ambiguated, scores: np.ndarray, k: int) -> torch.Tensor:
    """Dense (B, L, m) code keeping only the guessed entries: what the attacker decodes."""
    return amb.guessed_code(guess_mask(scores, k))


def image_quality(output: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM (8-bit) of ``output`` against ``images``, both in [0, 1]."""
    out, ref = to_uint8(output), to_uint8(images)
    return float(psnr_uint8(out, ref).mean()), float(ssim(out, ref).mean())


@torch.no_grad()
def decode_images(model: SparseAutoencoder, code: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``model.decode`` in batches."""
    return torch.cat([model.decode(code[s : s + batch]) for s in range(0, len(code), batch)])


def decode_quality(
    model: SparseAutoencoder, code: torch.Tensor, images: torch.Tensor, batch: int = 64
) -> tuple[float, float]:
    """Mean PSNR and SSIM (8-bit) of ``model.decode(code)`` against ``images`` in [0, 1]."""
    return image_quality(decode_images(model, code, batch), images)


def subset(amb: Ambiguated, items: np.ndarray | slice) -> Ambiguated:
    """The records of some items (e.g. the ones a slow attack has time for)."""
    return amb.items(items)


@dataclass
class AttackResult:
    """One row of the attack table. ``recall``/``auc`` are None for reference rows
    (authorized, public as is), which guess nothing."""

    name: str
    recall: float | None
    recall_std: float | None  # over maps
    chance: float | None
    auc: float | None
    psnr: float | None
    ssim: float | None
    n_items: int
    seconds: float
    notes: str = ""
    # Re-identification by a face recognizer (``imambig.attacks.identity``), when run.
    identity_top1: float | None = None
    identity_auc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in asdict(self).items()}


def evaluate(
    name: str,
    scores: np.ndarray,
    amb: Ambiguated,
    k: int,
    model: SparseAutoencoder | None = None,
    images: torch.Tensor | None = None,
    seconds: float = 0.0,
    notes: str = "",
) -> AttackResult:
    """Score an attack on its items; PSNR/SSIM only when a model and the originals are given."""
    if scores.shape != amb.real.shape:
        raise ValueError(f"scores {scores.shape} do not match the public entries {amb.real.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"attack {name} produced non-finite scores")
    recall = per_map_recall(scores, amb.real, k)
    psnr = ssim_ = None
    if model is not None and images is not None:
        psnr, ssim_ = decode_quality(model, guessed_code(amb, scores, k), images)
    return AttackResult(
        name=name,
        recall=float(recall.mean()),
        recall_std=float(recall.std()),
        chance=k / amb.real.shape[-1],
        auc=roc_auc(scores, amb.real),
        psnr=psnr,
        ssim=ssim_,
        n_items=len(scores),
        seconds=seconds,
        notes=notes,
    )
