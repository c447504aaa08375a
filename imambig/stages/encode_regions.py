"""Encoding a collection region by region: lay out the stores, encode one region,
finish.

A region is a run of ``region_items`` items that fills one public-store chunk and one
keystore row, so regions can be written by many processes at once. The work is
described by an ``EncodeJob`` (locations, settings and secret *sources*), so it can be
shipped to any worker; arrays never travel through the scheduler. Steps, driven by
``imambig.stages.encode_driver``:

1. ``prepare``: fit (or load) the noise model, lay out the versioned public store and
   keystore (or reopen them to resume / extend), return the regions still to do.
2. ``encode_region``: encode one region, write both stores, then the region's
   done-marker. A region without a marker is redone from scratch; since encoding is
   deterministic, redoing it writes the same bytes, so a crash anywhere is repaired by
   re-running. When the collection grew, the old last region (partly filled) keeps the
   marker of its finished part: only the new items are encoded, the finished ones'
   records and keys are copied byte for byte into the region's chunk and key row.
3. ``finish``: mark both stores complete, consolidate metadata, and move the
   ``current`` pointer of the public and key roots to this version.

What a process needs is opened once: by the driver for steps 1 and 3 (the model and
the owner's secrets, ``EncodeContext.open``), and by each worker for step 2 (the model,
the noise fit, and the ``RegionKeys`` the driver derived from the secrets: a worker
never resolves a secret itself).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore, Slot
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig, SecretSources
from imambig.errors import StoreFormatError
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.keys import key_bytes
from imambig.mechanism.noise_model import NOISE_DESIGN, NoiseModel, fit_noise_model
from imambig.mechanism.quantizer import VALUE_BITS
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import ModelInfo, load_model
from imambig.model.precision import resolve
from imambig.stages.encode_images import encode_images
from imambig.stages.region_keys import RegionKeys
from imambig.stages.release_binding import (
    Mechanism,
    check_release,
    family,
    published_versions,
)
from imambig.stages.versions import set_current, version_name
from imambig.stores.image_store import FORGOTTEN, ImageStore, open_image_store
from imambig.stores.lease import Fence
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore, public_store_id, record_digests

STATE_DIR = "_state"  # inside the keystore: private, never published


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

    def noise_location(self) -> Location:
        # The fit depends on the encoder's precision too (its bottlenecks).
        return self.model.join(
            f"noise_d{NOISE_DESIGN}_k{self.k_public}_{self.config.precision}.npz")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        config = job.config.for_model(model.config.k, resolve(job.config.precision))
        job = dataclasses.replace(job, config=config)
        return cls(job, model, info, Secrets(job.secrets))

    @property
    def version(self) -> str:
        """The store version this job writes (model id and k'), known before any work."""
        return version_name(self.info.model_id, self.job.k_public)

    @functools.cached_property
    def key_provider(self) -> LocalKeyProvider:
        return LocalKeyProvider.from_secrets(self.secrets)


@functools.lru_cache(maxsize=4)
def _worker_context(job: EncodeJob, keys: RegionKeys
                    ) -> tuple[SparseAutoencoder, NoiseModel, DecoyMap]:
    """A worker's model, noise fit and decoy map for ``job`` (the driver's job, k' and
    precision settled), once per process. No secret is resolved here: the worker has
    only the keys the driver derived (``keys``)."""
    torch.set_num_threads(job.config.torch_threads)
    model, _, _ = load_model(job.model)
    noise = NoiseModel.load(job.noise_location())
    return model, noise, keys.decoy_map(noise)


def _marker(keystore: Location, start: int, stop: int) -> Location:
    return keystore.join(STATE_DIR, "regions", f"{start:012d}-{stop:012d}.json")


def _regions(n_items: int, region_items: int) -> list[tuple[int, int]]:
    return [(s, min(s + region_items, n_items)) for s in range(0, n_items, region_items)]


def _markers(keystore: Location) -> set[tuple[int, int]]:
    """(start, stop) of every done-marker (one listing, not one request per region)."""
    out = set()
    for name in keystore.join(STATE_DIR, "regions").names():
        start, _, stop = name.removesuffix(".json").partition("-")
        if start.isdigit() and stop.isdigit():
            out.add((int(start), int(stop)))
    return out


def _done(keystore: Location, regions: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """Regions whose done-marker exists."""
    return set(regions) & _markers(keystore)


# ---------------------------------------------------------------------------
# 1. prepare
# ---------------------------------------------------------------------------


def ensure_noise_model(context: EncodeContext, store: ImageStore) -> Location:
    """The noise fit stored with the model, fitted on the image store's training split
    the first time. Returns its location."""
    job = context.job
    location = job.noise_location()
    if location.exists():
        return location
    idx = store.indices("train")
    if len(idx) == 0:
        idx = store.indices("all")
    idx = idx[: job.config.noise_fit_items]
    batches = (to_tensor(store.read(idx[s : s + 64])) for s in range(0, len(idx), 64))
    noise = fit_noise_model(context.model, context.info.model_id, batches, job.k_public,
                            precision=job.config.precision)
    noise.save(location)
    return location


def mechanism(context: EncodeContext, noise_sha256: str) -> Mechanism:
    """What this job's fakes depend on besides the images (see ``release_binding``)."""
    return Mechanism(
        model_id=context.info.model_id, k_public=context.job.k_public,
        noise_design=NOISE_DESIGN, noise_fit_sha256=noise_sha256, value_bits=VALUE_BITS,
        precision=context.job.config.precision,
        owner_fingerprint=context.secrets.owner_secret.fingerprint("imambig/release/v1"),
    )


def _published_noise_fits(root: Location, model_id: str) -> dict[str, dict]:
    fits = {}
    for name in published_versions(root, model_id):
        try:
            fits[name] = PublicStore.open(root.join(name)).attrs.get("noise_fit", {})
        except (FileNotFoundError, ValueError, KeyError):
            continue  # not a store (a half-created folder): nothing was published there
    return fits


def prepare(context: EncodeContext, overwrite: bool = False) -> Plan:
    """Lay out or reopen the stores; call while holding the version's lease."""
    job, c = context.job, context.model.config
    if warning := c.privacy_warning():
        warnings.warn(f"model {context.info.model_id}: {warning}", stacklevel=2)
    store = open_image_store(job.images)
    if (store.height, store.width) != (c.image_height, c.image_width):
        raise ValueError(f"image store holds {store.height}x{store.width} images, the model "
                         f"expects {c.image_height}x{c.image_width}")
    _ = context.secrets.owner_secret  # a missing secret fails here, before any work
    provider = context.key_provider
    noise = ensure_noise_model(context, store)
    noise_fit = {"file": noise.name, "sha256": hashlib.sha256(noise.read_bytes()).hexdigest(),
                 "precision": job.config.precision}
    check_release(mechanism(context, noise_fit["sha256"]), job.public_root, job.keys_root,
                  _published_noise_fits(job.public_root, context.info.model_id),
                  *family(context.info.metadata))

    version = context.version
    public_location = job.public_root.join(version)
    keystore_location = job.keys_root.join(version)
    n = store.n_items
    public, fresh = _open_or_create_public(public_location, context, store, noise_fit,
                                           overwrite)
    keystore = _open_or_create_keystore(keystore_location, public, provider, overwrite or fresh)
    check_ids_in_place(public, keystore, store)
    if public.n_items < n:  # new images since the last run: extend, keep old chunks
        _extend(public, keystore, n)
    regions = _regions(n, job.config.region_items)
    markers = _markers(keystore_location)
    todo = tuple(r for r in regions if r not in markers)
    # A region left partly filled by an earlier, smaller collection: done up to b.
    topped_up = tuple((a, b) for a, b in markers for start, stop in todo
                      if a == start and b < stop)
    return Plan(version, public_location, keystore_location, n, job.config.region_items,
                todo, len(regions) - len(todo), job.config.precision, topped_up=topped_up)


def store_binding(context: EncodeContext, store: ImageStore,
                  noise_fit: dict[str, str]) -> dict[str, Any]:
    """Everything a version's records depend on; its digest is the public store id, so
    versions that differ in any of it never share a data key or associated data."""
    job = context.job
    return {
        "model_id": context.info.model_id, "version": context.version,
        "k_public": job.k_public, "chunk_items": job.config.region_items,
        "noise_fit_sha256": noise_fit["sha256"],
        "source": store.attrs.get("source", job.images.url),
        "owner_secret": context.secrets.owner_secret.fingerprint("imambig/store-binding/v1"),
    }


def _open_or_create_public(location: Location, context: EncodeContext, store: ImageStore,
                           noise_fit: dict[str, str], overwrite: bool
                           ) -> tuple[PublicStore, bool]:
    """The version's public store, and whether it was (re)created just now."""
    job, c = context.job, context.model.config
    store_id = public_store_id(store_binding(context, store, noise_fit))
    try:
        public: PublicStore | None = PublicStore.open(location, mode="r+")
    except (FileNotFoundError, ValueError, KeyError):
        public = None
    same = public is not None and (
        public.attrs.get("store_id") == store_id
        and public.attrs.get("noise_fit") == noise_fit
        and public.chunk_items == job.config.region_items
    )
    if public is not None and not same and not overwrite:
        raise ValueError(f"{location} holds a public store built with other settings; pass "
                         "--overwrite to rebuild it")
    if public is not None and same:
        return public, False
    return PublicStore.create(
        location, store_id=store_id, version=context.version, n_items=store.n_items,
        chunk_items=job.config.region_items, n_maps=c.n_maps, code_length=c.code_length,
        k=c.k, k_public=job.k_public, model_id=context.info.model_id,
        image_size=(c.image_height, c.image_width), noise_fit=noise_fit,
    ), True


def _open_or_create_keystore(location: Location, public: PublicStore,
                             provider: LocalKeyProvider, overwrite: bool) -> Keystore:
    try:
        ks = Keystore.open(location, provider, mode="r+")
        if ks.attrs["public_store_id"] == public.attrs["store_id"] and not (
            overwrite and not public.attrs.get("complete")
        ):
            return ks
    except (FileNotFoundError, KeyError, StoreFormatError):
        pass
    location.join(STATE_DIR).delete()  # markers of another store version mean nothing now
    a = public.attrs
    return Keystore.create(
        location, public_store_id=a["store_id"], version=a["version"], model_id=a["model_id"],
        n_items=a["n_items"],
        chunk_items=a["chunk_items"], n_maps=a["n_maps"], k=a["k"], k_public=a["k_public"],
        key_bytes=key_bytes(a["n_maps"], a["k_public"], a["k"]), provider=provider,
    )


def _extend(public: PublicStore, keystore: Keystore, n: int) -> None:
    for name in ("support", "values", "item_id"):
        arr = public.group[name]
        arr.resize((n, *arr.shape[1:]))
    rows = math.ceil(n / public.chunk_items)
    keystore.group["sealed"].resize((rows, keystore.group["sealed"].shape[1]))
    public.group.attrs.update({"n_items": n, "complete": False})
    public.attrs.update({"n_items": n, "complete": False})
    keystore.set_attrs(n_items=n, complete=False)
    public.consolidate()  # readers must not see the old shape
    # The old last chunk was partial: its marker (start, old) stays and now means "done
    # up to old"; encode_region encodes the rest and copies the finished items.


def check_ids_in_place(public: PublicStore, keystore: Keystore, store: ImageStore) -> None:
    """Refuse to resume or extend a version whose finished items moved in the image
    store (ingest appends, but a store rebuilt with ``--overwrite`` sorts its items by
    name): a finished region would then hold other items than its position says. Every
    done-marker is checked, those of partly finished regions too."""
    names = store.item_ids()
    again = (f"remove this version ({public.location} and {keystore.location}) to encode "
             "the collection again")
    if store.n_items < public.n_items:
        raise ValueError(f"the image store has {store.n_items} items, fewer than the "
                         f"{public.n_items} of {public.location}; {again}")
    keystore.check_public(public)
    done = sorted(r for r in _markers(keystore.location) if r[1] <= public.n_items)
    for start, stop in done:
        expected = np.array(keystore.opaque_ids(names[start:stop]))
        # The sealed slots say who was encoded where (the public item_id array is the
        # provider's to change); a region's markers never span two rows.
        row = keystore.read_row(start // keystore.chunk_items)
        first = start % keystore.chunk_items
        sealed = np.array([s.item_id for s in row[first : first + stop - start]])
        moved = np.flatnonzero(sealed != expected)
        if len(moved):
            at = start + int(moved[0])
            raise ValueError(
                f"items moved in the image store since {public.location} was encoded: "
                f"position {at} now holds {names[at]!r}, another item was encoded there "
                f"({len(moved)} of items {start}-{stop} differ). Ingest keeps items sorted "
                f"by name, so items added with names that sort earlier shift the others; "
                f"{again}")


# ---------------------------------------------------------------------------
# 2. one region (on a worker)
# ---------------------------------------------------------------------------


def encode_region(job: EncodeJob, plan: Plan, start: int, stop: int,
                  keys: RegionKeys) -> RegionManifest:
    """Items ``start:stop``, with the keys the driver derived for this version."""
    marker = _marker(plan.keystore, start, stop)
    if (done := marker.read_bytes()) is not None:
        return RegionManifest(**{**json.loads(done), "skipped": True})
    t0, started = time.perf_counter(), time.time()
    model, noise, decoy_map = _worker_context(job, keys)
    store = open_image_store(job.images)
    held = dict(plan.topped_up).get(start, start)  # items start:held are done already
    images = store.read(slice(held, stop))
    ids = store.item_ids()[start:stop].tolist()
    enc = encode_images(model, noise, decoy_map, images, job.config.precision,
                        job.config.micro_batch)
    _fenced(plan, f"writing items {held}-{stop}")
    keystore = Keystore.open(plan.keystore, keys.key_provider(), mode="r+")
    opaque = keystore.opaque_ids(ids)
    public = PublicStore.open(plan.public, mode="r+")
    row = start // plan.region_items
    mask, values = enc.mask, enc.values
    records = record_digests(public.attrs["store_id"], opaque[held - start :], mask, values)
    slots = [Slot(*entry) for entry in zip(opaque[held - start :], records, enc.keys,
                                           strict=True)]
    for j, name in enumerate(ids[held - start :]):
        if name.startswith(FORGOTTEN):  # its image is gone: publish an empty tombstone
            mask[j], values[j] = False, 0
            slots[j] = Slot.tombstone(slots[j].item_id, keystore.key_bytes)
    if held > start:
        # The finished items' records and keys, copied (never re-encoded).
        old_mask, old_values = public.read(slice(start, held))
        old_slots = keystore.read_row(row)[: held - start]
        if [s.item_id for s in old_slots] != opaque[: held - start]:
            raise ValueError(f"items {start}-{held} moved in the image store since they were "
                             "encoded; remove this version to encode the collection again")
        mask, values = np.concatenate([old_mask, mask]), np.concatenate([old_values, values])
        slots = old_slots + slots
    public.write_region(start, mask, values, opaque)
    keystore.write_row(row, slots)
    digest = hashlib.sha256(np.packbits(mask).tobytes() + values.astype(np.float16).tobytes())
    manifest = RegionManifest(start, stop, stop - held, digest.hexdigest(),
                              time.perf_counter() - t0, started, time.time())
    _fenced(plan, f"marking items {start}-{stop} done")
    # Written last: its presence means both the public chunk and the key row are in.
    marker.write_bytes(json.dumps(manifest.to_dict()).encode())
    if held > start:
        _marker(plan.keystore, start, held).delete()
    return manifest


def _fenced(plan: Plan, before: str) -> None:
    """Stop (``LeaseLost``) unless the run's lease still names this run."""
    if plan.fence is not None:
        plan.fence.check(before)


# ---------------------------------------------------------------------------
# 3. finish
# ---------------------------------------------------------------------------


def finish(context: EncodeContext, plan: Plan) -> None:
    regions = _regions(plan.n_items, plan.region_items)
    missing = [r for r in regions if r not in _done(plan.keystore, regions)]
    if missing:
        raise RuntimeError(f"{len(missing)} regions are not done (first {missing[0]}); "
                           "re-run encode to finish them")
    PublicStore.open(plan.public, mode="r+").finish()
    Keystore.open(plan.keystore, context.key_provider, mode="r+").finish()
    for root in (context.job.public_root, context.job.keys_root):
        set_current(root, plan.version, plan.n_items)
