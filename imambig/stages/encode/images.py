"""Images -> public records + keys, for one batch (pure; no storage, no scheduling).

The whole batch stays on the encoder's device (``device``: the CPU, or a GPU) from the
forward pass through the mechanism and the seal; what comes back to the CPU is the
public record (mask, values) and the real-entry masks that become keys. Each stage's
time is added to a ``StageTimes`` when one is given (the benchmarks' breakdown and the
region manifests' figures).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from imambig.mechanism.ambiguation import ambiguate_tensors
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.keys import encode_keys
from imambig.mechanism.noise_model import NoiseModel
from imambig.mechanism.seal import seal_records
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import autocast
from imambig.stores.loader import to_tensor

# Items ambiguated together. The mechanism's arithmetic is exact and per item, so an
# item's record does not depend on its group; groups bound memory (the mechanism holds
# about 2 MB an item at once: a 1024-item region would take 2.5 GB per worker in one).
MECHANISM_ITEMS = 64


@dataclass
class StageTimes:
    """Seconds spent per stage of encoding (added up over batches and regions)."""

    read: float = 0.0  # image store -> uint8 arrays (decompression included)
    forward: float = 0.0  # the encoder: images -> bottlenecks
    mechanism: float = 0.0  # decoys, fakes, magnitudes, quantizer
    seal: float = 0.0  # HMAC, AES keystream, permutation and pads
    keys: float = 0.0  # real-entry masks -> key bytes (CPU)
    write: float = 0.0  # public store chunk + keystore row + marker
    wait: float = 0.0  # waiting for this worker's compute to be free (pipelining)

    @contextlib.contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)  # kernels run asynchronously
            setattr(self, name, getattr(self, name) + time.perf_counter() - t0)

    def add(self, other: StageTimes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class EncodedBatch:
    mask: np.ndarray  # (B, L, m) bool, public
    values: np.ndarray  # (B, L, k') float16, public
    keys: list[bytes]  # per item, secret


def _device(model: SparseAutoencoder) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def bottlenecks(model: SparseAutoencoder, images: np.ndarray, precision: str = "fp32",
                micro_batch: int = 8) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> bottlenecks (B, L, n) in float32, at ``precision``,
    on the model's device.

    Runs in zero-padded micro-batches of a fixed size so every item's result is bitwise
    independent of its neighbours (CPU kernels pick different blockings for different
    batch sizes, which moves float rounding).
    """
    device = _device(model)
    out = []
    for s in range(0, len(images), micro_batch):
        x = to_tensor(images[s : s + micro_batch]).to(device)
        n = len(x)
        if n < micro_batch:
            x = torch.cat([x, x.new_zeros((micro_batch - n, *x.shape[1:]))])
        with autocast(precision, device):
            out.append(model.bottleneck(x).float()[:n])
    return torch.cat(out)


@dataclass(frozen=True)
class Unsealed:
    """Ambiguated records before the seal, on the encoder's device: (B, L, m) public
    masks, (B, L, k') quantized values, (B, L, k') real-entry flags."""

    mask: torch.Tensor
    values: torch.Tensor
    real: torch.Tensor


@torch.no_grad()
def ambiguate_unsealed(model: SparseAutoencoder, noise: NoiseModel, decoy_map: DecoyMap,
                       h: torch.Tensor, times: StageTimes | None = None) -> Unsealed:
    """The mechanism on bottlenecks ``h`` (B, L, n), in groups of ``MECHANISM_ITEMS``,
    on ``h``'s device: the records before the seal."""
    times = times if times is not None else StageTimes()
    parts = []
    for s in range(0, len(h), MECHANISM_ITEMS):
        group = h[s : s + MECHANISM_ITEMS]
        with times.stage("mechanism", group.device):
            parts.append(ambiguate_tensors(model, group, noise, decoy_map, sealed=False)[:3])
    if not parts:
        c = model.config
        empty = torch.zeros((0, c.n_maps, c.code_length), dtype=torch.bool, device=h.device)
        return Unsealed(empty, torch.zeros((0, c.n_maps, noise.k_public), device=h.device),
                        torch.zeros((0, c.n_maps, noise.k_public), dtype=torch.bool,
                                    device=h.device))
    return Unsealed(*(torch.cat(p) for p in zip(*parts, strict=True)))


def seal_unsealed(records: Unsealed, seal_key: bytes, times: StageTimes | None = None
                  ) -> EncodedBatch:
    """Seal records and code their keys, in groups of ``MECHANISM_ITEMS``: the public
    records (on the CPU) and the keys."""
    times = times if times is not None else StageTimes()
    masks, values, keys = [], [], []
    for s in range(0, len(records.mask), MECHANISM_ITEMS):
        part = (records.mask[s : s + MECHANISM_ITEMS], records.values[s : s + MECHANISM_ITEMS],
                records.real[s : s + MECHANISM_ITEMS])
        with times.stage("seal", part[0].device):
            mask, value, real, seals = seal_records(*part, seal_key)
            mask, value, real = mask.cpu().numpy(), value.cpu().numpy(), real.cpu().numpy()
        with times.stage("keys"):
            keys += encode_keys(real, seals)
        masks.append(mask)
        values.append(value)
    if not masks:
        _, L, m = records.mask.shape
        return EncodedBatch(np.zeros((0, L, m), bool),
                            np.zeros((0, L, records.values.shape[-1]), np.float16), [])
    return EncodedBatch(np.concatenate(masks), np.concatenate(values), keys)


@torch.no_grad()
def ambiguate_bottlenecks(model: SparseAutoencoder, noise: NoiseModel, decoy_map: DecoyMap,
                          h: torch.Tensor, times: StageTimes | None = None) -> EncodedBatch:
    """Sealed public records and keys of bottlenecks ``h`` (B, L, n), on ``h``'s device:
    the mechanism, seal and key coding. Given the same bottlenecks this writes the same
    bytes on every machine and device (``tests/golden/README.md``)."""
    unsealed = ambiguate_unsealed(model, noise, decoy_map, h, times)
    return seal_unsealed(unsealed, decoy_map.seal_key, times)


@torch.no_grad()
def encode_images(
    model: SparseAutoencoder,
    noise: NoiseModel,
    decoy_map: DecoyMap,
    images: np.ndarray,
    precision: str = "fp32",
    micro_batch: int = 8,
    times: StageTimes | None = None,
) -> EncodedBatch:
    """Encode uint8 images (B, H, W, 3) on the model's device: sealed public records
    and keys. Nothing but the pixels (and the owner's decoy map and seal key) decides an
    item's record."""
    times = times if times is not None else StageTimes()
    with times.stage("forward", _device(model)):
        h = bottlenecks(model, images, precision, micro_batch)
    return ambiguate_bottlenecks(model, noise, decoy_map, h, times)
