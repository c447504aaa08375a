"""Identity: can a face recognizer name the person from what an attacker reconstructs?

The question users care about. A gallery holds other photos of the target identities
(never the targets themselves); each reconstruction (the original and the authorized
image as checks that the recognizer works at this size, then the public code decoded
as is and every attacker's output) is matched to the nearest identity centroid.
Reported: top-1 accuracy (chance = 1 / identities) and the verification ROC AUC of
genuine against impostor distances (chance = 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imambig.attacks.scoring import roc_auc
from imambig.evaluation.face_recognizer import FaceRecognizer
from imambig.evaluation.metrics import to_uint8


def to_hwc_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8."""
    return to_uint8(images).permute(0, 2, 3, 1).contiguous().numpy()


@dataclass(frozen=True)
class Gallery:
    recognizer: FaceRecognizer
    identities: np.ndarray  # (P,) the people in it, sorted
    centroids: np.ndarray  # (P, 128) mean descriptor of each person's gallery photos

    @classmethod
    def build(cls, recognizer: FaceRecognizer, images: np.ndarray,
              identities: np.ndarray) -> Gallery:
        """``images`` (G, H, W, 3) uint8 of people ``identities`` (G,)."""
        d = recognizer.descriptors(images)
        people = np.unique(identities)
        return cls(recognizer, people, np.stack([d[identities == p].mean(0) for p in people]))

    @property
    def chance(self) -> float:
        return 1.0 / len(self.identities)

    def identify(self, images: torch.Tensor, identities: np.ndarray) -> tuple[float, float]:
        """(top-1 accuracy, verification AUC) of reconstructions ``images`` (B, 3, H, W)
        of people ``identities`` (B,)."""
        d = self.recognizer.descriptors(to_hwc_uint8(images))
        dist = np.linalg.norm(d[:, None] - self.centroids[None], axis=-1)  # (B, P)
        top1 = float((self.identities[dist.argmin(1)] == identities).mean())
        genuine = self.identities[None, :] == identities[:, None]
        return top1, roc_auc(-dist, genuine)
