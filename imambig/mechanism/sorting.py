"""Sorting and selection along the last axis, the same result on every device, fast on
the CPU.

The mechanism selects top-k supports and sorts each record's keystream words. On the
CPU numpy's vectorised (AVX-512) sorts are used, faster there than torch's ``topk`` and
``sort`` (``benchmarks/bench_privacy.py`` times the stages that use them); other devices
use torch's. Only sorted *values* and orders of distinct or stably ordered keys
are used, which no device can break differently.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import torch

_TORCH_KERNELS = contextvars.ContextVar("torch_kernels", default=False)


@contextlib.contextmanager
def torch_kernels() -> Iterator[None]:
    """Use torch's kernels on the CPU too, as on a GPU: the CPU rehearsal of the GPU
    path (the records must come out the same)."""
    token = _TORCH_KERNELS.set(True)
    try:
        yield
    finally:
        _TORCH_KERNELS.reset(token)


def _numpy(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not _TORCH_KERNELS.get()


def kth_largest(x: torch.Tensor, ranks: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The ``r``-th largest values (1 = the largest) along the last axis, each (..., 1)."""
    if _numpy(x):
        ordered = torch.from_numpy(np.sort(x.numpy(), axis=-1))
        n = x.shape[-1]
        return tuple(ordered[..., n - r : n - r + 1] for r in ranks)
    top = x.topk(max(ranks), dim=-1).values
    return tuple(top[..., r - 1 : r] for r in ranks)


def stable_argsort(x: torch.Tensor) -> torch.Tensor:
    """Indices sorting integer ``x`` along the last axis, equal keys in index order."""
    if _numpy(x):
        return torch.from_numpy(np.argsort(x.numpy(), axis=-1, kind="stable"))
    return torch.sort(x, dim=-1, stable=True).indices


def sort_distinct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) sorting ``x`` along the last axis, whose entries are distinct
    within a row (so any sort is the stable one)."""
    if _numpy(x):
        order = np.argsort(x.numpy(), axis=-1)
        return torch.from_numpy(np.take_along_axis(x.numpy(), order, -1)), torch.from_numpy(order)
    return torch.sort(x, dim=-1)
