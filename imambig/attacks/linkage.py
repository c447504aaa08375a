"""Exact-photo linkage: can the holder of a photo find its record?

Someone who holds the very photo (or a re-saved copy of it) encodes it with the public
model and looks for the record that publishes its support with its values. Under the
ambiguation alone a record is a deterministic function of the image that keeps the real
values in the clear, so the photo finds its own record among many; a sealed record
(``imambig.mechanism.seal``) hides them, and the search is left to chance. Either way
it would only confirm that a photo was published (and under which item).
"""

from __future__ import annotations

import numpy as np
import torch

from imambig.mechanism.quantizer import quantize
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


@torch.no_grad()
def photo_codes(model: SparseAutoencoder, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """(B, L, m): the top-k code the model gives ``images``, through the public
    quantizer (zero off the support)."""
    out = []
    for s in range(0, len(images), batch):
        out.append(quantize(model.encode(images[s : s + batch])).float().numpy())
    return np.concatenate(out)


def linkage_scores(codes: np.ndarray, records: Ambiguated, tolerance: float = 0.15
                   ) -> np.ndarray:
    """(B, N): the share of each photo's support that each record publishes with a value
    within ``tolerance`` (relative) of the photo's own: a re-saved copy moves values by
    about one quantizer step, another image by far more."""
    dense = records.public_code().numpy()  # (N, L, m)
    on = codes != 0
    scores = np.empty((len(codes), len(dense)))
    for i, (code, support) in enumerate(zip(codes, on, strict=True)):
        near = np.abs(dense - code) <= tolerance * np.abs(code)
        scores[i] = (near & support).sum((1, 2)) / support.sum()
    return scores


def link(model: SparseAutoencoder, photos: torch.Tensor, records: Ambiguated,
         truth: np.ndarray) -> float:
    """Top-1 accuracy of finding record ``truth[i]`` among ``records`` for photo ``i``."""
    scores = linkage_scores(photo_codes(model, photos), records)
    return float((scores.argmax(1) == truth).mean())
