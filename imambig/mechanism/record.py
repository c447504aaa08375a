"""The public record of a batch of items and its secret part: ``Ambiguated``.

A record is what ambiguation produces and what everything downstream reads: the stores
write it, keys encode its ``real`` part, attacks guess that part from the rest, and the
evaluation decodes it. Kept apart from the mechanism that makes it, so that readers of
records need not import the mechanism; sealing and opening (``imambig.mechanism.seal``,
array code below this one) are methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from imambig.mechanism.seal import seal_records, unseal_records


@dataclass(frozen=True)
class Ambiguated:
    """A batch of public records plus their secret part.

    ``mask`` (B, L, m) bool: public support, k' per map (public).
    ``values`` (B, L, k') float16: quantized values in position order (public).
    ``real`` (B, L, k') bool: which public entries are real (secret: the keys).
    ``seals`` (B, 16) uint8 or None: each record's seal (secret: in the keys), None for
    records not sealed (``imambig.mechanism.seal``).
    """

    mask: np.ndarray
    values: np.ndarray
    real: np.ndarray
    seals: np.ndarray | None = None

    def public_code(self) -> torch.Tensor:
        """The public code as a dense (B, L, m) float tensor: what everyone sees."""
        return scatter_code(self.mask, self.values)

    def guessed_code(self, guess: np.ndarray) -> torch.Tensor:
        """The public code kept where ``guess`` (B, L, k'): what an attacker who guessed
        the real entries decodes (it has no seal)."""
        return scatter_code(self.mask, np.where(guess, self.values, 0))

    def authorized_code(self, real: np.ndarray | None = None) -> torch.Tensor:
        """The code a key holder decodes: the record unsealed, kept where ``real``
        (default: the real entries)."""
        keep = self.real if real is None else real
        opened = Ambiguated(self.mask, self.values, keep, self.seals).opened()
        return opened.guessed_code(opened.real)

    def opened(self) -> Ambiguated:
        """What a seal holder sees: the ambiguated records under sealed ones (these
        records themselves when they are not sealed)."""
        if self.seals is None:
            return self
        mask, values, real = unseal_records(*_tensors(self), self.seals)
        return Ambiguated(mask.numpy(), values.numpy(), real.numpy())

    def sealed(self, seal_key: bytes) -> Ambiguated:
        """These (unsealed) records sealed with the owner's ``seal_key``: permuted masks,
        padded values, ``real`` in the sealed entries' order, and the seals."""
        if self.seals is not None:
            raise ValueError("records are sealed already")
        mask, values, real, seals = seal_records(*_tensors(self), seal_key)
        return Ambiguated(mask.numpy(), values.numpy(), real.numpy(), seals)

    def items(self, index: np.ndarray | slice) -> Ambiguated:
        """The records of some items."""
        return Ambiguated(self.mask[index], self.values[index], self.real[index],
                          None if self.seals is None else self.seals[index])

    @staticmethod
    def concatenate(parts: Sequence[Ambiguated]) -> Ambiguated:
        seals = [p.seals for p in parts]
        return Ambiguated(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in ("mask", "values", "real")),
                          None if any(s is None for s in seals) else np.concatenate(seals))


def scatter_code(mask: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """(B, L, m) mask + (B, L, k') values in position order -> dense float32 code."""
    code = torch.zeros(mask.shape, dtype=torch.float32)
    code[torch.from_numpy(mask)] = torch.from_numpy(values.astype(np.float32)).flatten()
    return code


def _tensors(amb: Ambiguated) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a))  # type: ignore[return-value]
                 for a in (amb.mask, amb.values, amb.real))
