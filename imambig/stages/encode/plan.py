"""The settled plan of an encode: what a run writes and how, decided once.

``EncodeJob`` names the work (locations, settings, secret *sources*) and travels to
workers; ``EncodeContext.open`` settles it for the model once (k' from the model's k,
the precision resolved on the driver's device), so every worker computes exactly the
same; ``Plan`` is what ``prepare`` decided (store version, regions still to do, the
noise fit and its digest, the run's lease fence); a ``RegionManifest`` is what a
region reports back, and its done-marker.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig, SecretSources
from imambig.errors import StoreFormatError
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import ModelInfo, load_model
from imambig.model.precision import resolve
from imambig.stages.encode.images import StageTimes
from imambig.stages.versions import version_name
from imambig.stores.lease import Fence
from imambig.stores.location import Location
from imambig.untrusted import parse_json

MARKER_LIMIT = 64 << 10  # a marker is some 200 bytes


@dataclass(frozen=True)
class EncodeJob:
    """Everything a worker needs to know, and nothing secret: hashable and picklable.
    (The secrets are named by source for the driver; workers get ``RegionKeys``.)"""

    images: Location  # the image store
    model: Location  # model folder (model.pt, noise fits)
    public_root: Location  # versioned public stores live under it
    keys_root: Location  # versioned keystores live under it (a different root)
    config: EncodeConfig = field(default_factory=EncodeConfig)
    secrets: SecretSources = field(default_factory=SecretSources)

    @property
    def k_public(self) -> int:
        if self.config.k_public is None:
            raise ValueError("k' is settled when the model is known (EncodeContext.open)")
        return self.config.k_public



@dataclass(frozen=True)
class Plan:
    version: str
    public: Location  # this version's public store
    keystore: Location  # this version's keystore
    n_items: int
    region_items: int
    regions: tuple[tuple[int, int], ...]  # still to do
    done: int  # regions already done
    precision: str = "fp32"  # the encoder's, resolved: the records depend on it
    fence: Fence | None = None  # the run's lease, checked before every commit
    # (start, held) of regions to do whose items start:held are done already (the old
    # last region of a collection that grew): only held:stop is encoded
    topped_up: tuple[tuple[int, int], ...] = ()
    # The owner's noise fit (a file of the model folder) and its digest: a worker
    # refuses a fit with other bytes (swapped after the driver checked it).
    noise_file: str = ""
    noise_sha256: str = ""

    @property
    def total(self) -> int:
        """Regions of the whole collection."""
        return math.ceil(self.n_items / self.region_items)


@dataclass(frozen=True)
class RegionManifest:
    start: int
    stop: int
    items: int
    public_sha256: str  # of the region's public bytes: a cheap identity check
    seconds: float
    started: float = 0.0  # wall clock (epoch s), for throughput without start-up costs
    finished: float = 0.0
    skipped: bool = False
    worker: str = ""  # which worker process encoded it (host:pid), for per-worker rates
    # Seconds per stage (``StageTimes``' fields): what the benchmarks and the operator see.
    stages: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def times(self) -> StageTimes:
        return StageTimes(**self.stages)

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> RegionManifest:
        """A done-marker's manifest; ``StoreFormatError`` unless it is one (the keys
        root may be a provider's: a marker is checked like any stored object)."""
        doc = parse_json(raw, f"region marker {where}", MARKER_LIMIT, StoreFormatError)
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}  # annotations: "int", ...
        required = {f.name for f in dataclasses.fields(cls)  # the rest have defaults
                    if f.default is f.default_factory is dataclasses.MISSING}
        if not isinstance(doc, dict) or not required <= set(doc) <= set(kinds):
            raise StoreFormatError(f"region marker {where} is not a region manifest")
        for name, value in doc.items():
            ok = {"int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                  "str": isinstance(value, str) and len(value) <= 128,
                  "float": isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value),
                  "bool": isinstance(value, bool),
                  "dict[str, float]": _stage_times(value)}[kinds[name]]
            if not ok:
                raise StoreFormatError(f"region marker {where}: {name} is malformed")
        return cls(**doc)


def _stage_times(value: object) -> bool:
    """Whether a marker's ``stages`` names only ``StageTimes``' fields, with finite
    non-negative seconds."""
    names = {f.name for f in dataclasses.fields(StageTimes)}
    return isinstance(value, dict) and set(value) <= names and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in value.values())


# ---------------------------------------------------------------------------
# What a process opens once
# ---------------------------------------------------------------------------


@dataclass
class EncodeContext:
    """The job with k' settled, its model (model.pt read once) and its secrets."""

    job: EncodeJob
    model: SparseAutoencoder
    info: ModelInfo
    secrets: Secrets

    @classmethod
    def open(cls, job: EncodeJob) -> EncodeContext:
        model, info, _ = load_model(job.model)
        config = job.config.for_model(model.config.k,
                                      resolve(job.config.precision, job.config.device))
        job = dataclasses.replace(job, config=config)
        return cls(job, model, info, Secrets(job.secrets))

    @property
    def version(self) -> str:
        """The store version this job writes (model id and k'), known before any work."""
        return version_name(self.info.model_id, self.job.k_public)

    @functools.cached_property
    def key_provider(self) -> LocalKeyProvider:
        return LocalKeyProvider.from_secrets(self.secrets)
