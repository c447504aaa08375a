"""Numeric precision of the network's forward passes: ``bf16`` or ``fp32``.

bfloat16 autocast runs the convolutions on the CPU's AVX-512 BF16 / AMX units (oneDNN)
or a GPU's tensor cores, about 3x faster than float32 here. It changes results: about
0.3 % of support entries differ from float32, so a store records the precision it was
encoded at and never mixes two (see ``imambig.stages.encode.regions``). ``auto`` picks bf16 where the
hardware has it and fp32 elsewhere; it is resolved once, and the resolved name is what
gets recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from imambig.config import PRECISIONS

Precision = Literal["auto", "bf16", "fp32"]
CHOICES: tuple[str, ...] = PRECISIONS


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` has native bfloat16 matrix units (not emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN reports AVX-512 BF16 / AMX; without them bf16 is emulated and slower.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for this device; explicit names are checked."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Autocast to bfloat16 for ``bf16``; nothing for ``fp32``. Takes resolved names."""
    device = torch.device(device)
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"resolve {precision!r} first (imambig.model.precision.resolve)")
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield

