"""Typed configuration: the one place where settings and their defaults live.

One frozen config per stage (``IngestConfig``, ``TrainConfig``, ``EncodeConfig``,
``EvaluateConfig``, ``AttackConfig``) and ``PipelineConfig`` made of them, plus
``ModelConfig`` (the network's shape) and ``SecretSources`` (where the owner's secrets
are found). Configs say *how* a stage runs; *where* its inputs and outputs live is a
``Location`` (``imambig.stores.location``), passed beside them. The command line and
the Prefect orchestration build these objects and hand them on whole, so every default
below is written once.

Frozen dataclasses: hashable, stored beside artefacts (``to_dict``/``from_dict``),
pickled to workers, and validated by Prefect (pydantic) when they are flow parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

# The forward pass's numeric precisions (``imambig.model.precision``): here, so the
# command line lists them without importing torch.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the sparse autoencoder (see ``imambig.model.autoencoder``).

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
    negative_slope: float = 0.01  # leaky ReLU; the reference's (PyTorch's default)

    def __post_init__(self) -> None:
        # A model file's config comes from storage anybody could write: every field is
        # checked for type and range before any arithmetic, so nonsense ends as a
        # ValueError naming the field and no layer is ever sized by a stranger's number.
        for name in ("image_height", "image_width", "n_maps", "code_length", "k", "groups"):
            _bounded_int(name, getattr(self, name), MODEL_LIMITS[name])
        for name in ("filters", "scales"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not 0 < len(values) <= MAX_LEVELS:
                raise ValueError(f"{name} must be 1..{MAX_LEVELS} integers")
            for v in values:
                _bounded_int(name, v, MODEL_LIMITS[name])
        slope = self.negative_slope
        if (not isinstance(slope, int | float) or isinstance(slope, bool)
                or not math.isfinite(slope) or not 0 <= slope < 1):
            raise ValueError(f"negative_slope must be a number in [0, 1), got {slope!r}")
        if len(self.filters) != len(self.scales):
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
                "(docs/privacy.md, 'Measured privacy'); use a shape with n >= k for "
                "published codes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The config of a mapping (a model file's, possibly a stranger's): ValueError
        for anything but the known fields with values in range."""
        if not isinstance(d, dict):
            raise ValueError(f"a model config is a mapping, not {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(map(str, unknown))[:5]}")
        d = dict(d)
        for key in ("filters", "scales"):
            if key in d:
                if not isinstance(d[key], list | tuple):
                    raise ValueError(f"{key} must be a list of integers")
                d[key] = tuple(d[key])
        return cls(**d)


# Ranges of a model's shape: far beyond any useful model (the paper's is 128x128 images,
# 6 levels of 40 filters, L=20, m=512), small enough that a layer sized by them is
# never a memory bomb (shapes are checked against the file's tensors before loading).
MODEL_LIMITS: dict[str, tuple[int, int]] = {
    "image_height": (1, 8192), "image_width": (1, 8192), "n_maps": (1, 4096),
    "code_length": (1, 1 << 16), "k": (1, 1 << 16), "groups": (1, 4096),
    "filters": (1, 4096), "scales": (1, 64),
}
MAX_LEVELS = 32  # down-sampling levels (len(filters))


def _bounded_int(name: str, value: Any, limits: tuple[int, int]) -> None:
    low, high = limits
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"model config {name} must be an integer in {low}..{high}, "
                         f"got {str(value)[:40]!r}")


# Presets. `paper` is the published configuration; `small` keeps all the paper's code
# sizes (L=20, m=512, k=128 and the 16x16 bottleneck, n=256) on 64x64 images, with half
# the filters, so privacy numbers transfer while CPU training stays practical.
# `small-n64` down-scales once more (n=64 < k): there the k real values over-determine
# the bottleneck, which the least-squares attack exploits; kept to reproduce that finding.
# `tiny` is for tests (the demo uses `small`). `paper` computes the reference's function exactly
# (tests/test_reference.py); the others keep the leaky-ReLU slope 0.2 they were trained
# and measured with (the slope is a recipe choice: benchmarks/train_ablation.py).
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "small": ModelConfig(
        image_height=64,
        image_width=64,
        filters=(20, 20, 20, 20, 20, 10),
        scales=(1, 2, 1, 2, 1, 1),
        negative_slope=0.2,
    ),
    "small-n64": ModelConfig(
        image_height=64, image_width=64, filters=(20, 20, 20, 20, 20, 10),
        negative_slope=0.2,
    ),
    "tiny": ModelConfig(
        image_height=32,
        image_width=32,
        filters=(10, 10, 10, 10, 10, 5),
        n_maps=8,
        code_length=64,
        k=16,
        negative_slope=0.2,
    ),
}
DEFAULT_PRESET = "small"  # the model of docs/results.md


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def preset_name(model: ModelConfig) -> str:
    """The name of the preset ``model`` is, or "custom"."""
    return next((name for name, m in PRESETS.items() if m == model), "custom")


def default_k_public(k: int) -> int:
    """k', the public non-zeros per map, when none is given: 2k (the paper's choice, and
    the one setting where every attack stays within 1 dB of a random guess)."""
    return 2 * k


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------

OWNER_SECRET_ENV = "IMAMBIG_OWNER_SECRET"
KEYSTORE_KEY_ENV = "IMAMBIG_KEYSTORE_KEY"
SIGNING_KEY_ENV = "IMAMBIG_SIGNING_KEY"


@dataclass(frozen=True)
class SecretSources:
    """Where the owner's secrets are found, never the secrets themselves: specs
    ``env:NAME``, ``file:PATH`` or a registered scheme such as ``prefect:BLOCK``
    (``imambig.access.secrets``). Safe to log, store and pass as a flow parameter."""

    owner_secret: str = f"env:{OWNER_SECRET_ENV}"  # seeds the decoy noise of every item
    keystore_key: str = f"env:{KEYSTORE_KEY_ENV}"  # protects the keystore's data keys
    signing_key: str = f"env:{SIGNING_KEY_ENV}"  # signs grants (imambig keys new-owner)


# ---------------------------------------------------------------------------
# The Dask cluster
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSecurity:
    """How an existing Dask scheduler is reached (``imambig.stages.encode.dask_cluster``): over
    ``tls://`` with the operator's certificates, as file paths (never their contents).
    Paths left out come from Dask's own config (``distributed.comm.tls.ca-file``,
    ``.client.cert``, ``.client.key``). A cluster started for the run needs none: it
    makes in-memory credentials that only this process holds."""

    tls_ca_file: str | None = None  # the CA that signed the scheduler's and workers' certs
    tls_cert_file: str | None = None  # this client's certificate (PEM)
    tls_key_file: str | None = None  # its private key (PEM; may be inside the cert file)
    # A tcp:// scheduler is unauthenticated and unencrypted: whoever reaches it runs code
    # on its workers and reads the keys sent to them. Refused unless this is set.
    allow_plain_tcp: bool = False


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
    chunk_items: int = 256  # images per Zarr chunk of the image store
    min_side: int = 16  # smaller sources are set aside, not upscaled
    max_pixels: int = 64_000_000  # larger sources are set aside (decompression bombs)
    workers: int = 0  # decode processes; 0 = one per core
    limit: int | None = None  # ingest only the first N sources (sorted by id)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: PRESETS[DEFAULT_PRESET])
    # The defaults are the best-known recipe, docs/results.md's ``small`` model: MSE, a
    # weight average of decay 0.999, batches of 48, a cosine schedule over a 24-minute budget
    # (``benchmarks/train_ablation.py`` measures each choice against its alternative).
    epochs: int = 400  # an upper bound under a time budget
    # Time budget: when set (> 0), training stops after this many minutes of optimizer
    # steps (validation and checkpoints not counted; the model records both times) and
    # the learning-rate schedule follows that time instead of steps (``epochs`` is then
    # only an upper bound). None or 0: ``epochs`` decides, bit-reproducibly; runs are
    # not bit-reproducible under a time budget.
    minutes: float | None = 24.0
    batch_size: int = 48
    lr: float = 2e-3
    warmup: float = 0.02  # fraction of the schedule spent warming the learning rate up
    min_lr_ratio: float = 0.05  # cosine schedule ends at lr * min_lr_ratio
    loss: Literal["bce", "mse"] = "mse"
    flip: bool = True  # random horizontal flips (faces are near-symmetric)
    ema: float = 0.999  # decay of the weight average validated and published; 0: none
    # Training images on which the average's BatchNorm statistics are measured before it
    # is validated or published (its own statistics, not the live weights').
    calibration_items: int = 512
    precision: str = "auto"  # auto | bf16 | fp32 (imambig.model.precision)
    # Fine-tuning: start from this model folder's weights (same preset) instead of a
    # random initialisation; the new model records it as its parent.
    init: str | None = None
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


@dataclass(frozen=True)
class GrantDecoderConfig:
    """Training of the decoder that lower-fidelity grants are revealed with
    (``imambig.stages.grant_decoder``)."""

    epochs: int = 8
    minutes: float | None = None  # time budget of optimizer steps; epochs is then a cap
    batch_size: int = 64
    lr: float = 1e-3
    # Each batch keeps a random k_low of each map's k entries, k_low drawn from
    # min_fraction * k .. k: one decoder for every fidelity a grant may have.
    min_fraction: float = 0.125
    # A decoder for grants of exactly this k_low instead, fine-tuned from the general one
    # (which is trained first where missing).
    k_low: int | None = None
    max_items: int | None = None  # cap the training split
    val_items: int = 256
    precision: str = "auto"
    seed: int = 0
    num_threads: int = 0


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeConfig:
    """How a collection is encoded into the public store and the keystore."""

    k_public: int | None = None  # k': public non-zeros per map; None: default_k_public(k)
    # A region is the unit of parallel work: its items fill one public-store chunk and
    # one keystore row, and one task encodes it.
    region_items: int = 512
    # The encoder runs in micro-batches of this fixed size (zero-padded) on one torch
    # thread: float results then do not depend on batch composition or thread count, so
    # an item's public bytes are the same whether encoded alone or in a bulk run.
    micro_batch: int = 8
    torch_threads: int = 1
    # Records depend on it (about 0.3 % of support entries differ between bf16 and
    # fp32), so a store version is bound to the resolved precision.
    precision: str = "auto"  # auto | bf16 | fp32
    noise_fit_items: int = 2048  # training images the noise model is fitted on
    # Where a worker runs the encoder and the mechanism: "cpu", or "cuda" / "cuda:N" (the
    # whole batch stays on the GPU; records are the same bytes given the same
    # bottlenecks, but a GPU's encoder rounds like another kind of CPU would).
    device: str = "cpu"

    def for_model(self, k: int, precision: str) -> EncodeConfig:
        """This config with k' settled for a model of top-k ``k`` and the precision
        resolved on this machine (``precision``): the one place where a missing k' or
        ``auto`` becomes a value, so workers elsewhere compute exactly the same."""
        return dataclasses.replace(self, k_public=self.k_public or default_k_public(k),
                                   precision=precision)


# ---------------------------------------------------------------------------
# Evaluation and attacks
# ---------------------------------------------------------------------------

# Every attack of the suite (``imambig.attacks``) but the slow LP.
DEFAULT_ATTACKS: tuple[str, ...] = (
    "random", "largest", "smallest", "magnitude", "position", "discriminator", "reencode",
    "least_squares", "least_squares_reencode", "learned_inversion", "inversion_reencode",
)
ALL_ATTACKS: tuple[str, ...] = (*DEFAULT_ATTACKS, "lp")  # the registry's names (tested)
# Second releases the privacy experiment makes of each target (imambig.stages.
# near_duplicates, plus "precision": encoded at the other precision, and "finetune":
# under a model fine-tuned one epoch from the first).
SECOND_RELEASES: tuple[str, ...] = (
    "copy", "jpeg90", "jpeg75", "resize+5", "resize-5", "shift2", "crop2", "precision",
    "finetune",
)


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``evaluate`` measures on the stores (the paper's Table 1 and more)."""

    split: str = "test"  # the image-store split evaluated
    max_items: int = 200  # evaluate at most this many items of it
    attacker_items: int = 2048  # training images the attacker ambiguates itself
    releases: int = 3  # ambiguations of each (one attacker secret each): learned inversion
    identity: bool = True  # face-recognition rows, where the recognizer is installed
    linkage: bool = True  # exact-photo linkage: each item's record found from its photo
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    codecs: tuple[str, ...] = ("jpeg", "webp", "avif")  # baselines at matched bytes
    grid_items: int = 6  # columns of grid.png
    rd_items: int = 64  # items behind the rate-distortion curves; 0: no rd.png
    grant_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)  # lower-fidelity grant rows, k_low/k
    grantee_attacks: bool = True  # each grant row beside the best of its grantee's attacks


@dataclass(frozen=True)
class AttackConfig:
    """The privacy experiment behind ``imambig attack``: the owner fits the noise on
    training images and ambiguates test images; an outsider attacks them with images
    of its own."""

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    k_publics: tuple[int, ...] = ()  # one run per k'; empty: default_k_public(k) only
    fit_items: int = 2048  # training images the noise model is fitted on
    # The attacker's own images: every training image the noise fit does not use, at
    # most this many (0: all of them). The learned inversion sees each ``releases``
    # times, ambiguated with as many secrets of the attacker's own.
    own_items: int = 0
    releases: int = 3
    inversion_epochs: int = 6
    target_items: int = 200  # test images attacked
    # Lower-fidelity grantees (imambig.attacks.grantee): one set of rows per k_low; each
    # grantee may also hold the full keys of this many other items of the owner.
    k_lows: tuple[int, ...] = ()
    key_holder_items: int = 500
    second_releases: tuple[str, ...] = SECOND_RELEASES
    pair_items: int = 500  # the attacker's own pairs that train the second-release classifier
    second_model: str | None = None  # a model retrained from scratch: one more second release
    identity: bool = True  # re-identification rows, where the face recognizer is installed
    gallery_per_identity: int = 5  # other photos of each test identity in the gallery
    linkage: bool = True  # exact-photo linkage rows
    precision: str = "auto"  # the encoder's, as for encoding
    seed: int = 0


# ---------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineConfig:
    """ingest -> train -> encode -> (publish) -> (grant) -> evaluate.

    The pipeline ingests at its model's image size: ``ingest.height`` and ``width`` are
    replaced by ``train.model``'s (see ``ingest_for_model``).
    """

    ingest: IngestConfig = field(default_factory=IngestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    grant_items: int = 4  # items granted to the recipient, when there is one

    def ingest_for_model(self) -> IngestConfig:
        m = self.train.model
        return dataclasses.replace(self.ingest, height=m.image_height, width=m.image_width)


# ---------------------------------------------------------------------------
# Object storage: timeouts and retries
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageRetryConfig:
    """How requests to an S3 store are timed out and retried (``imambig.stores.retry``).

    Three layers, innermost first: botocore retries each HTTP request (5xx, throttling,
    resets, timeouts; ``request_attempts`` in all, its "standard" mode's jittered
    backoff); s3fs retries each call and each body read (``s3fs_retries``); imambig
    retries each S3 operation again after those gave up (up to ``attempts``, waits from
    ``backoff_s`` doubling to ``max_backoff_s``, jittered) until ``budget_s`` has passed
    since the operation began, then raises ``StorageUnavailableError``. A location's
    storage option ``"retry"`` (a dict of these fields) overrides them; explicit
    botocore settings (s3fs's ``config_kwargs``) win over the ones derived here.
    """

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0  # per socket read, not per object
    request_attempts: int = 3
    s3fs_retries: int = 5
    attempts: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    budget_s: float = 300.0

    def __post_init__(self) -> None:
        if min(self.connect_timeout_s, self.read_timeout_s) <= 0:
            raise ValueError("storage timeouts must be positive")
        if min(self.request_attempts, self.s3fs_retries, self.attempts) < 1:
            raise ValueError("storage retry attempts must be at least 1")
        if min(self.backoff_s, self.max_backoff_s, self.budget_s) < 0:
            raise ValueError("storage retry waits and budget must not be negative")

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> StorageRetryConfig:
        """The config a storage option ``"retry"`` dict describes (defaults for the rest)."""
        if not options:
            return cls()
        if not isinstance(options, dict):
            raise ValueError(f"the storage option 'retry' is a dict, not {options!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(options) - names):
            raise ValueError(f"unknown storage option retry.{unknown[0]} (known: "
                             f"{', '.join(sorted(names))})")
        return cls(**options)
