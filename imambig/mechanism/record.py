"""The public record of a batch of items and its secret part: ``Ambiguated``.

A record is what ambiguation produces and what everything downstream reads: the stores
write it, keys encode its ``real`` part, attacks guess that part from the rest, and the
evaluation decodes it. Kept apart from the mechanism that makes it, so that readers of
records need not import the mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Ambiguated:
    """A batch of public records plus their secret part.

    ``mask`` (B, L, m) bool: public support, k' per map (public).
    ``values`` (B, L, k') float16: quantized values in position order (public).
    ``real`` (B, L, k') bool: which public entries are real (secret: the keys).
    """

    mask: np.ndarray
    values: np.ndarray
    real: np.ndarray

    def public_code(self) -> torch.Tensor:
        """The public code as a dense (B, L, m) float tensor."""
        return scatter_code(self.mask, self.values)

    def authorized_code(self, real: np.ndarray | None = None) -> torch.Tensor:
        """The code an authorized user decodes: public values kept where ``real``."""
        keep = self.real if real is None else real
        return scatter_code(self.mask, np.where(keep, self.values, 0))


def scatter_code(mask: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """(B, L, m) mask + (B, L, k') values in position order -> dense float32 code."""
    code = torch.zeros(mask.shape, dtype=torch.float32)
    code[torch.from_numpy(mask)] = torch.from_numpy(values.astype(np.float32)).flatten()
    return code
