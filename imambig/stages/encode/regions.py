"""Encoding a collection region by region: lay out the stores, encode one region,
finish.

A region is a run of ``region_items`` items that fills one public-store chunk and one
keystore row, so regions can be written by many processes at once. The work is
described by an ``EncodeJob`` (locations, settings and secret *sources*), so it can be
shipped to any worker; arrays never travel through the scheduler. Steps, driven by
``imambig.stages.encode.driver``:

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

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore, Slot
from imambig.errors import FormatError, StoreFormatError
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.keys import key_bytes
from imambig.mechanism.noise_model import NOISE_DESIGN, NoiseModel
from imambig.mechanism.quantizer import VALUE_BITS
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import load_model
from imambig.stages.encode import noise_fit
from imambig.stages.encode.images import (
    EncodedBatch,
    StageTimes,
    ambiguate_unsealed,
    bottlenecks,
    seal_unsealed,
)
from imambig.stages.encode.noise_fit import NoiseFit
from imambig.stages.encode.plan import (
    MARKER_LIMIT,
    EncodeContext,
    EncodeJob,
    Plan,
    RegionManifest,
)
from imambig.stages.encode.region_keys import RegionKeys
from imambig.stages.encode.release_binding import (
    Mechanism,
    check_release,
    family,
    published_versions,
    released,
)
from imambig.stages.versions import lease_location, set_current
from imambig.stores.image_store import FORGOTTEN, ImageStore, open_image_store
from imambig.stores.lease import Lease
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location, Mode
from imambig.stores.public_store import PublicStore, public_store_id, record_digests

STATE_DIR = "_state"  # inside the keystore: private, never published


@functools.lru_cache(maxsize=4)
def _worker_context(job: EncodeJob, keys: RegionKeys, noise_file: str, noise_sha256: str
                    ) -> tuple[SparseAutoencoder, NoiseModel, DecoyMap]:
    """A worker's model, the noise fit the driver checked, and the decoy map for
    ``job`` (the driver's job, k' and precision settled), once per process. No secret is
    resolved here: the worker has only the keys the driver derived (``keys``)."""
    torch.set_num_threads(job.config.torch_threads)
    model, _, _ = load_model(job.model)
    model = model.to(job.config.device)
    noise = noise_fit.load_published(job.model, {"file": noise_file, "sha256": noise_sha256},
                                     model.config)
    return model, noise, keys.decoy_map(noise)


def _marker(keystore: Location, start: int, stop: int) -> Location:
    return keystore.join(STATE_DIR, "regions", f"{start:012d}-{stop:012d}.json")


def read_marker(marker: Location) -> RegionManifest | None:
    """The manifest of a done region, or None where its marker is absent."""
    try:
        raw = marker.read_bytes(limit=MARKER_LIMIT)
    except FormatError as exc:  # oversized: not a marker this code wrote
        raise StoreFormatError(str(exc)) from None
    return None if raw is None else RegionManifest.from_json(raw, str(marker))


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


def owner_noise_fit(context: EncodeContext, store: ImageStore) -> NoiseFit:
    """The owner's noise fit for this job (``imambig.stages.encode.noise_fit``): the one in the
    model folder, verified, or else one fitted now on the image store's training split,
    in memory (``NoiseFit.save`` stores it)."""
    job, info = context.job, context.info
    owner = context.secrets.owner_secret
    earlier = released(job.keys_root, info.model_id)
    found = noise_fit.find(job.model, info.model_id, context.model.config, job.k_public,
                           job.config.precision, owner,
                           earlier.noise_fit_sha256 if earlier else None)
    if found is not None:
        return found
    idx = store.indices("train")
    if len(idx) == 0:
        idx = store.indices("all")
    idx = idx[: job.config.noise_fit_items]
    batches = (to_tensor(store.read(idx[s : s + 64])) for s in range(0, len(idx), 64))
    return noise_fit.fit(job.model, context.model, info.model_id, batches, job.k_public,
                         job.config.precision, owner)


def ensure_noise_model(context: EncodeContext, store: ImageStore) -> Location:
    """The owner's noise fit stored with the model, fitted the first time (for tools
    that fit ahead of encoding). Returns its location."""
    fit = owner_noise_fit(context, store)
    fit.save(context.secrets.owner_secret)
    return fit.location


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
            fit = PublicStore.open(root.join(name)).attrs.get("noise_fit", {})
        except (FileNotFoundError, ValueError, KeyError):
            continue  # not a store (a half-created folder): nothing was published there
        fits[name] = fit if isinstance(fit, dict) else {}
    return fits


def check_encode(context: EncodeContext, overwrite: bool = False) -> NoiseFit:
    """Everything that can refuse an encode, before it writes anything (no lease, no
    noise fit, no release record, no store): the image size, the secrets, a run holding
    the version's lease, the mechanism the model was published with, a store of the
    version built with other settings or whose items moved. Returns the owner's noise
    fit, fitted in memory where there is none yet."""
    job, c = context.job, context.model.config
    if warning := c.privacy_warning():
        warnings.warn(f"model {context.info.model_id}: {warning}", stacklevel=2)
    store = open_image_store(job.images)
    if (store.height, store.width) != (c.image_height, c.image_width):
        raise ValueError(f"image store holds {store.height}x{store.width} images, the model "
                         f"expects {c.image_height}x{c.image_width}")
    _ = context.secrets.owner_secret  # a missing secret fails here, before any work
    _ = context.key_provider
    Lease(lease_location(job.keys_root, context.version)).check_free()  # before a fit
    fit = owner_noise_fit(context, store)
    _check_stores(context, store, fit, overwrite)
    return fit


def _check_stores(context: EncodeContext, store: ImageStore, fit: NoiseFit,
                  overwrite: bool) -> None:
    """The refusals that depend on what the roots hold (read only)."""
    job = context.job
    check_release(mechanism(context, fit.sha256), job.public_root, job.keys_root,
                  _published_noise_fits(job.public_root, context.info.model_id),
                  *family(context.info.metadata), record=False)
    public = _existing_public(job.public_root.join(context.version), context, store,
                              fit.attrs(), overwrite, mode="r")
    if public is not None:
        keystore = _existing_keystore(job.keys_root.join(context.version), public,
                                      context.key_provider, overwrite, mode="r")
        if keystore is not None:
            check_ids_in_place(public, keystore, store)


def prepare(context: EncodeContext, overwrite: bool = False,
            fit: NoiseFit | None = None) -> Plan:
    """Lay out or reopen the stores; call while holding the version's lease. ``fit``:
    what ``check_encode`` returned before the lease was taken (checked again here: the
    roots may have changed meanwhile); nothing is written before these checks pass."""
    job = context.job
    if fit is None:
        fit = check_encode(context, overwrite)
    store = open_image_store(job.images)
    owner = context.secrets.owner_secret
    if not fit.saved:  # another run of this owner may have stored its fit meanwhile
        fit = noise_fit.find(job.model, fit.model_id, context.model.config, fit.k_public,
                             fit.precision, owner) or fit
    _check_stores(context, store, fit, overwrite)
    provider = context.key_provider
    fit.save(owner)  # the run's first write
    check_release(mechanism(context, fit.sha256), job.public_root, job.keys_root,
                  _published_noise_fits(job.public_root, context.info.model_id),
                  *family(context.info.metadata))

    version = context.version
    public_location = job.public_root.join(version)
    keystore_location = job.keys_root.join(version)
    n = store.n_items
    public, fresh = _open_or_create_public(public_location, context, store, fit.attrs(),
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
                todo, len(regions) - len(todo), job.config.precision, topped_up=topped_up,
                noise_file=fit.name, noise_sha256=fit.sha256)


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


def _existing_public(location: Location, context: EncodeContext, store: ImageStore,
                     noise_fit: dict[str, str], overwrite: bool, mode: Mode = "r+"
                     ) -> PublicStore | None:
    """The version's public store where it was built with these settings; None where
    there is none, or ``overwrite`` replaces another; refused otherwise."""
    job = context.job
    store_id = public_store_id(store_binding(context, store, noise_fit))
    try:
        public = PublicStore.open(location, mode=mode)
    except (FileNotFoundError, ValueError, KeyError):
        return None
    if (public.attrs.get("store_id") == store_id and public.attrs.get("noise_fit") == noise_fit
            and public.chunk_items == job.config.region_items):
        return public
    if not overwrite:
        raise ValueError(f"{location} holds a public store built with other settings; pass "
                         "--overwrite to rebuild it")
    return None


def _open_or_create_public(location: Location, context: EncodeContext, store: ImageStore,
                           noise_fit: dict[str, str], overwrite: bool
                           ) -> tuple[PublicStore, bool]:
    """The version's public store, and whether it was (re)created just now."""
    job, c = context.job, context.model.config
    public = _existing_public(location, context, store, noise_fit, overwrite)
    if public is not None:
        return public, False
    store_id = public_store_id(store_binding(context, store, noise_fit))
    return PublicStore.create(
        location, store_id=store_id, version=context.version, n_items=store.n_items,
        chunk_items=job.config.region_items, n_maps=c.n_maps, code_length=c.code_length,
        k=c.k, k_public=job.k_public, model_id=context.info.model_id,
        image_size=(c.image_height, c.image_width), noise_fit=noise_fit,
    ), True


def _existing_keystore(location: Location, public: PublicStore, provider: LocalKeyProvider,
                       overwrite: bool, mode: Mode = "r+") -> Keystore | None:
    """The version's keystore where it belongs to ``public`` and is kept."""
    try:
        ks = Keystore.open(location, provider, mode=mode)
        if ks.attrs["public_store_id"] == public.attrs["store_id"] and not (
            overwrite and not public.attrs.get("complete")
        ):
            return ks
    except (FileNotFoundError, KeyError, StoreFormatError):
        pass
    return None


def _open_or_create_keystore(location: Location, public: PublicStore,
                             provider: LocalKeyProvider, overwrite: bool) -> Keystore:
    ks = _existing_keystore(location, public, provider, overwrite)
    if ks is not None:
        return ks
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


# A worker runs ``WORKER_THREADS`` regions at once as a two-stage pipeline: one region
# in the encoder's forward pass, the other in the mechanism (or sealing, reading and
# writing), each on one torch thread. So the forward pass of the next region runs while
# the last one is ambiguated: on a CPU the two keep two cores busy, and I/O overlaps
# both. Records do not depend on this (each item's bytes are its own).
_FORWARD = threading.Lock()
_MECHANISM = threading.Lock()


@contextlib.contextmanager
def _stage_slot(lock: threading.Lock, times: StageTimes, threads: int) -> Iterator[None]:
    """Hold a pipeline stage of this worker; the time spent waiting for it counts as
    ``wait``."""
    waited = time.perf_counter()
    with lock:
        times.wait += time.perf_counter() - waited
        # OpenMP's thread count is a per-thread setting: set it in whichever task thread
        # computes, or a thread's first region runs on every core
        torch.set_num_threads(threads)
        yield


def encode_region(job: EncodeJob, plan: Plan, start: int, stop: int,
                  keys: RegionKeys) -> RegionManifest:
    """Items ``start:stop``, with the keys the driver derived for this version."""
    marker = _marker(plan.keystore, start, stop)
    if (done := read_marker(marker)) is not None:
        return dataclasses.replace(done, skipped=True)
    t0, started = time.perf_counter(), time.time()
    times = StageTimes()
    model, noise, decoy_map = _worker_context(job, keys, plan.noise_file, plan.noise_sha256)
    held = dict(plan.topped_up).get(start, start)  # items start:held are done already
    stores = _run_stores(plan, job.images, keys)
    try:
        with times.stage("read"):
            images = stores.images.read(slice(held, stop))
            ids = stores.images.item_ids()[start:stop].tolist()
        threads, device = job.config.torch_threads, torch.device(job.config.device)
        with _stage_slot(_FORWARD, times, threads), times.stage("forward", device):
            h = bottlenecks(model, images, job.config.precision, job.config.micro_batch)
        with _stage_slot(_MECHANISM, times, threads):
            unsealed = ambiguate_unsealed(model, noise, decoy_map, h, times)
        del h
        # the seal and key coding outside the stages: they overlap the next region's
        # mechanism (this thread's torch thread count is still the stage's)
        enc = seal_unsealed(unsealed, decoy_map.seal_key, times)
        del unsealed
        with times.stage("write"):
            mask, values = _write_region(plan, stores, start, stop, held, ids, enc)
    except BaseException:
        _drop_stores(stores)  # a retry opens them afresh (a connection may be broken)
        raise
    digest = hashlib.sha256(np.packbits(mask).tobytes() + values.astype(np.float16).tobytes())
    manifest = RegionManifest(start, stop, stop - held, digest.hexdigest(),
                              time.perf_counter() - t0, started, time.time(),
                              worker=f"{socket.gethostname()}:{os.getpid()}",
                              stages=times.to_dict())
    _fenced(plan, f"marking items {start}-{stop} done")
    # Written last: its presence means both the public chunk and the key row are in.
    marker.write_bytes(json.dumps(manifest.to_dict()).encode())
    if held > start:
        _marker(plan.keystore, start, held).delete()
    return manifest


@dataclasses.dataclass
class _RunStores:
    """The stores a worker reads and writes for one run, each opened when first needed."""

    plan: Plan
    image_location: Location
    keys: RegionKeys
    _images: ImageStore | None = None
    _public: PublicStore | None = None
    _keystore: Keystore | None = None

    @property
    def images(self) -> ImageStore:
        if self._images is None:
            self._images = open_image_store(self.image_location)
        return self._images

    @property
    def public(self) -> PublicStore:
        if self._public is None:
            self._public = PublicStore.open(self.plan.public, mode="r+")
        return self._public

    @property
    def keystore(self) -> Keystore:
        if self._keystore is None:
            self._keystore = Keystore.open(self.plan.keystore, self.keys.key_provider(),
                                           mode="r+")
        return self._keystore


_STORES: dict[tuple[Plan, Location, RegionKeys], _RunStores] = {}
_STORES_LOCK = threading.Lock()


def _run_stores(plan: Plan, images: Location, keys: RegionKeys) -> _RunStores:
    """This run's stores in this worker, opened once for all its regions: opening one
    on S3 takes several metadata reads and the image store's item ids are read whole,
    which per region cost more than the region's own bytes. A run is
    known by its plan, whose fence names the run (a fresh token per run), so a worker
    serving several runs never writes through another run's handles; without a fence
    nothing is kept."""
    with _STORES_LOCK:
        stores = _STORES.get((plan, images, keys))
        if stores is None:
            stores = _RunStores(plan, images, keys)
            if plan.fence is not None:
                while len(_STORES) >= 2:  # the current run and the one before it
                    _STORES.pop(next(iter(_STORES)))
                _STORES[(plan, images, keys)] = stores
        return stores


def _drop_stores(stores: _RunStores) -> None:
    with _STORES_LOCK:
        key = (stores.plan, stores.image_location, stores.keys)
        if _STORES.get(key) is stores:
            del _STORES[key]


def _write_region(plan: Plan, stores: _RunStores, start: int, stop: int, held: int,
                  ids: list[str], enc: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
    """Write a region's public chunk and keystore row; returns its whole public record
    (items ``start:held`` done before are copied, never re-encoded)."""
    _fenced(plan, f"writing items {held}-{stop}")
    keystore, public = stores.keystore, stores.public
    opaque = keystore.opaque_ids(ids)
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
        old_mask, old_values = public.read(slice(start, held))
        old_slots = keystore.read_row(row)[: held - start]
        if [s.item_id for s in old_slots] != opaque[: held - start]:
            raise ValueError(f"items {start}-{held} moved in the image store since they were "
                             "encoded; remove this version to encode the collection again")
        mask, values = np.concatenate([old_mask, mask]), np.concatenate([old_values, values])
        slots = old_slots + slots
    public.write_region(start, mask, values, opaque)
    keystore.write_row(row, slots)
    return mask, values


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
