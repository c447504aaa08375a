"""Typed configuration: the one place where defaults live.

Every config is a frozen dataclass so it can be hashed, stored beside artefacts
(``to_dict``/``from_dict``) and passed between processes by value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the sparse autoencoder (see docs in ``imambig.model.autoencoder``).

    ``filters[i]``/``scales[i]`` describe down-sampling level ``i``; the last filter
    count is also the channel count of every skip branch at the bottleneck.
    """

    image_height: int = 128
    image_width: int = 128
    filters: tuple[int, ...] = (40, 40, 40, 40, 40, 10)
    scales: tuple[int, ...] = (1, 2, 1, 2, 1, 2)
    n_maps: int = 20  # L: number of sparse code-maps
    code_length: int = 512  # m: length of each code-map
    k: int = 128  # non-zeros kept per map by the top-k sparsifier
    groups: int = 5  # groups of the chain's 5x5 convolution
    negative_slope: float = 0.2  # leaky ReLU

    def __post_init__(self) -> None:
        if len(self.filters) != len(self.scales) or not self.filters:
            raise ValueError("filters and scales must be non-empty and of equal length")
        if any(f % self.groups for f in self.filters):
            raise ValueError(f"every filter count must be a multiple of groups={self.groups}")
        if self.image_height % self.downscale or self.image_width % self.downscale:
            raise ValueError(
                f"image size {self.image_height}x{self.image_width} is not divisible by the "
                f"total down-scale {self.downscale}"
            )
        if not 0 < self.k <= self.code_length:
            raise ValueError(f"k={self.k} must be in 1..code_length={self.code_length}")

    @property
    def downscale(self) -> int:
        return math.prod(self.scales)

    @property
    def bottleneck_hw(self) -> tuple[int, int]:
        return self.image_height // self.downscale, self.image_width // self.downscale

    @property
    def bottleneck_size(self) -> int:
        """n: length of one bottleneck channel, the input of each grouped linear map."""
        h, w = self.bottleneck_hw
        return h * w

    def privacy_warning(self) -> str | None:
        """Why this shape weakens ambiguation, or None when it does not."""
        n, k = self.bottleneck_size, self.k
        if n >= k:
            return None
        return (f"bottleneck n={n} < k={k}: a map's k real values over-determine the "
                "bottleneck vector, so a least-squares fit can tell them from the fakes "
                "(README, 'Measured privacy'); use a shape with n >= k for published codes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        for key in ("filters", "scales"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# Presets. `paper` is the published configuration; `small` keeps all the paper's code
# sizes (L=20, m=512, k=128 and the 16x16 bottleneck, n=256) on 64x64 images, with half
# the filters, so privacy numbers transfer while CPU training stays practical.
# `small-n64` down-scales once more (n=64 < k): there the k real values over-determine
# the bottleneck, which the least-squares attack exploits; kept to reproduce that finding.
# `tiny` is for tests and the demo.
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "small": ModelConfig(
        image_height=64,
        image_width=64,
        filters=(20, 20, 20, 20, 20, 10),
        scales=(1, 2, 1, 2, 1, 1),
    ),
    "small-n64": ModelConfig(
        image_height=64, image_width=64, filters=(20, 20, 20, 20, 20, 10)
    ),
    "tiny": ModelConfig(
        image_height=32,
        image_width=32,
        filters=(10, 10, 10, 10, 10, 5),
        n_maps=8,
        code_length=64,
        k=16,
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# ---------------------------------------------------------------------------
# Ingestion
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestConfig:
    """How source images become the uint8 image store."""

    height: int = 128
    width: int = 128
    # Centre crop to this square side before resizing (CelebA: 178). None: the largest
    # centred crop with the target aspect ratio.
    crop: int | None = None
    split: str = "official"  # official | random:<train frac> | identity:<train frac>
    seed: int = 0
    chunk_items: int = 256  # images per Zarr chunk along the item axis
    min_side: int = 16  # smaller sources are set aside, not upscaled
    max_pixels: int = 64_000_000  # larger sources are set aside (decompression bombs)
    workers: int = 0  # decode processes; 0 = one per core


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeConfig:
    """How a collection is encoded into the public store and the keystore."""

    k_public: int | None = None  # k': public non-zeros per map; None = 2k (the paper's)
    chunk_items: int = 512  # items per public-store chunk, keystore row and Dask task
    # The encoder runs in micro-batches of this fixed size (zero-padded) on one torch
    # thread: float results then do not depend on batch composition or thread count, so
    # an item's public bytes are the same whether encoded alone or in a bulk run.
    micro_batch: int = 8
    torch_threads: int = 1
    # Records depend on it (about 0.3 % of support entries differ between bf16 and
    # fp32), so a store version is bound to the resolved precision.
    precision: str = "auto"  # auto | bf16 | fp32
    noise_fit_items: int = 2048  # training images the noise model is fitted on

    def public_count(self, k: int) -> int:
        return self.k_public or 2 * k


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: PRESETS["tiny"])
    epochs: int = 10
    # Wall-clock budget: when set, training stops after this many minutes and the
    # learning-rate schedule follows elapsed time instead of steps (``epochs`` is then
    # only an upper bound). Runs are not bit-reproducible under a time budget.
    minutes: float | None = None
    batch_size: int = 80
    lr: float = 2e-3
    warmup: float = 0.02  # fraction of the schedule spent warming the learning rate up
    min_lr_ratio: float = 0.05  # cosine schedule ends at lr * min_lr_ratio
    loss: Literal["bce", "mse"] = "bce"
    flip: bool = True  # random horizontal flips (faces are near-symmetric)
    ema: float = 0.0  # decay of the weight average validated and published; 0: none
    precision: str = "auto"  # auto | bf16 | fp32 (imambig.model.precision)
    seed: int = 0
    max_items: int | None = None  # cap the training split (quick runs)
    val_items: int = 256  # validation images evaluated each epoch
    checkpoint_every: int = 50  # optimizer steps between mid-epoch checkpoints
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch CPU threads; 0 = torch's default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        return cls(**d)


# ---------------------------------------------------------------------------
# Keys and key material
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyConfig:
    """Where secrets come from. Secrets themselves never live in code, configs or stores:
    a source is a spec, ``env:NAME`` or ``file:PATH`` (see ``imambig.access.secrets``)."""

    owner_secret_env: str = "IMAMBIG_OWNER_SECRET"
    keystore_key_env: str = "IMAMBIG_KEYSTORE_KEY"
    owner_secret_source: str | None = None  # None: env:<owner_secret_env>
    keystore_key_source: str | None = None  # None: env:<keystore_key_env>
    min_secret_bytes: int = 32

    @property
    def owner_secret_spec(self) -> str:
        return self.owner_secret_source or f"env:{self.owner_secret_env}"

    @property
    def keystore_key_spec(self) -> str:
        return self.keystore_key_source or f"env:{self.keystore_key_env}"
