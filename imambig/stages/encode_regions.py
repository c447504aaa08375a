"""Encoding a whole collection: template stores, chunk-aligned regions, finish.

The job is described by URLs and secret *specs* only (``EncodeJob``), so it can be
shipped to any worker; arrays never travel through the scheduler. Steps:

1. ``prepare``: load the model, fit (or load) the noise model, lay out the versioned
   public store and keystore (or reopen them to resume / extend), return the regions
   still to do.
2. ``encode_region``: one region = one public chunk = one keystore row; encode,
   write both, then write the region's done-marker. A region without a marker is
   redone from scratch; since encoding is deterministic, redoing it writes the same
   bytes, so a crash anywhere is repaired by re-running.
3. ``finish``: mark both stores complete, consolidate metadata, and move the
   ``current`` pointer of the public and key roots to this version.
"""

from __future__ import annotations

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

from imambig.access.keystore import Keystore, assert_separate_roots
from imambig.access.secrets import LocalKeyProvider, owner_secret
from imambig.config import EncodeConfig, KeyConfig
from imambig.mechanism.keys import key_bytes
from imambig.mechanism.noise_model import NOISE_DESIGN, NoiseModel, fit_noise_model
from imambig.model.checkpoint import load_model
from imambig.stages.encode_images import encode_images
from imambig.stores.image_store import open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import filesystem, join, write_bytes
from imambig.stores.public_store import PublicStore

STATE_DIR = "_state"  # inside the keystore root: private, never published
CURRENT = "current.json"


@dataclass(frozen=True)
class EncodeJob:
    images: str  # image store URL
    model: str  # model folder URL (model.pt, noise fits)
    public_root: str  # versioned public stores live under it
    keys_root: str  # versioned keystores live under it (a different root)
    config: EncodeConfig = field(default_factory=EncodeConfig)
    keys: KeyConfig = field(default_factory=KeyConfig)
    storage_options: str = "{}"  # JSON, so the job stays hashable and picklable

    @property
    def options(self) -> dict[str, Any]:
        return json.loads(self.storage_options)


@dataclass(frozen=True)
class Plan:
    version: str
    public_url: str
    keystore_url: str
    n_items: int
    chunk_items: int
    regions: list[tuple[int, int]]  # still to do
    done: int  # regions already done


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
# Resources, loaded once per worker process
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _resources(job: EncodeJob) -> tuple[Any, str, NoiseModel, bytes, LocalKeyProvider]:
    torch.set_num_threads(job.config.torch_threads)
    model, info, _ = load_model(job.model, job.options)
    noise = NoiseModel.load(noise_url(job, model.config.k), job.options)
    secret = owner_secret(job.keys).reveal()
    provider = LocalKeyProvider.from_config(job.keys)
    return model, info.model_id, noise, secret, provider


def noise_url(job: EncodeJob, k: int) -> str:
    return join(job.model, f"noise_d{NOISE_DESIGN}_k{job.config.public_count(k)}.npz")


def version_name(model_id: str, k_public: int) -> str:
    # The noise design is part of the name: a store is never finished with other fakes.
    return f"v-{model_id}-k{k_public}-d{NOISE_DESIGN}"


def _marker(keystore_url: str, start: int, stop: int) -> str:
    return join(keystore_url, STATE_DIR, "regions", f"{start:012d}-{stop:012d}.json")


def _done(job: EncodeJob, keystore_url: str, regions: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """Regions whose done-marker exists (one listing, not one request per region)."""
    fs, path = filesystem(join(keystore_url, STATE_DIR, "regions"), job.options)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)} if fs.exists(path) else set()
    return {r for r in regions if f"{r[0]:012d}-{r[1]:012d}.json" in names}


# ---------------------------------------------------------------------------
# 1. prepare
# ---------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_noise_model(job: EncodeJob, loaded: tuple | None = None) -> str:
    """Load the noise fit stored with the model, fitting it on the image store's
    training split the first time. Returns its URL. ``loaded``: the (model, info) the
    caller already has, so model.pt is not read again."""
    model, info = loaded or load_model(job.model, job.options)[:2]
    url = noise_url(job, model.config.k)
    fs, path = filesystem(url, job.options)
    if fs.exists(path):
        return url
    store = open_image_store(job.images, job.options)
    idx = store.indices("train")
    if len(idx) == 0:
        idx = store.indices("all")
    idx = idx[: job.config.noise_fit_items]
    batches = (to_tensor(store.read(idx[s : s + 64])) for s in range(0, len(idx), 64))
    noise = fit_noise_model(model, info.model_id, batches, job.config.public_count(model.config.k))
    noise.save(url, job.options)
    return url


def target_version(job: EncodeJob) -> str:
    """The store version this job writes (model id and k'), known before any work."""
    model, info, _ = load_model(job.model, job.options)
    return version_name(info.model_id, job.config.public_count(model.config.k))


def lease_url(job: EncodeJob, version: str) -> str:
    """Beside the versioned stores, not inside them: creating a store clears its folder."""
    return join(job.keys_root, "_leases", f"{version}.json")


def prepare(job: EncodeJob, overwrite: bool = False) -> Plan:
    """Lay out or reopen the stores; call while holding the version's lease."""
    assert_separate_roots(job.public_root, job.keys_root)
    model, info, _ = load_model(job.model, job.options)
    c, cfg = model.config, job.config
    if warning := c.privacy_warning():
        warnings.warn(f"model {info.model_id}: {warning}", stacklevel=2)
    kp = cfg.public_count(c.k)
    store = open_image_store(job.images, job.options)
    if (store.height, store.width) != (c.image_height, c.image_width):
        raise ValueError(f"image store holds {store.height}x{store.width} images, the model "
                         f"expects {c.image_height}x{c.image_width}")
    # Fail on missing secrets before any work is done.
    owner_secret(job.keys)
    provider = LocalKeyProvider.from_config(job.keys)
    nurl = ensure_noise_model(job, (model, info))
    fs, npath = filesystem(nurl, job.options)
    noise_fit = {"file": npath.rsplit("/", 1)[-1], "sha256": _sha256(fs.cat_file(npath))}

    version = version_name(info.model_id, kp)
    public_url = join(job.public_root, version)
    keystore_url = join(job.keys_root, version)
    n, chunk = store.n_items, cfg.chunk_items
    public = _open_or_create_public(public_url, job, store, c, kp, info.model_id,
                                    noise_fit, overwrite)
    keystore = _open_or_create_keystore(keystore_url, job, public, provider, overwrite)
    if public.n_items < n:  # new images since the last run: extend, keep old chunks
        _extend(job, public, keystore, n)
    regions = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    done = _done(job, keystore_url, regions)
    todo = [r for r in regions if r not in done]
    return Plan(version, public_url, keystore_url, n, chunk, todo, len(regions) - len(todo))


def _open_or_create_public(url, job, store, c, kp, model_id, noise_fit, overwrite):
    try:
        public = PublicStore.open(url, job.options, mode="r+")
    except (FileNotFoundError, ValueError, KeyError):
        public = None
    same = public is not None and (
        public.attrs.get("noise_fit") == noise_fit
        and public.chunk_items == job.config.chunk_items
        and public.attrs.get("source") == store.attrs.get("source", job.images)
    )
    if public is not None and not same and not overwrite:
        raise ValueError(f"{url} holds a public store built with other settings; pass "
                         "--overwrite to rebuild it")
    if public is None or not same:
        public = PublicStore.create(
            url, n_items=store.n_items, chunk_items=job.config.chunk_items, n_maps=c.n_maps,
            code_length=c.code_length, k=c.k, k_public=kp, model_id=model_id,
            source=store.attrs.get("source", job.images),
            image_size=(c.image_height, c.image_width), noise_fit=noise_fit,
            storage_options=job.options,
        )
    return public


def _open_or_create_keystore(url, job, public, provider, overwrite):
    try:
        ks = Keystore.open(url, provider, job.options, mode="r+")
        if ks.attrs["public_store_id"] == public.attrs["store_id"] and not (
            overwrite and not public.attrs.get("complete")
        ):
            return ks
    except (FileNotFoundError, KeyError):
        pass
    fs, path = filesystem(join(url, STATE_DIR), job.options)
    if fs.exists(path):  # markers of another store version are meaningless now
        fs.rm(path, recursive=True)
    a = public.attrs
    return Keystore.create(
        url, public_store_id=a["store_id"], model_id=a["model_id"], n_items=a["n_items"],
        chunk_items=a["chunk_items"], n_maps=a["n_maps"], k=a["k"], k_public=a["k_public"],
        key_bytes=key_bytes(a["n_maps"], a["k_public"], a["k"]), provider=provider,
        storage_options=job.options,
    )


def _extend(job: EncodeJob, public: PublicStore, keystore: Keystore, n: int) -> None:
    old = public.n_items
    for name in ("support", "values", "item_id"):
        arr = public.group[name]
        arr.resize((n, *arr.shape[1:]))
    rows = math.ceil(n / public.chunk_items)
    keystore.group["sealed"].resize((rows, keystore.group["sealed"].shape[1]))
    for obj in (public, keystore):
        obj.group.attrs.update({"n_items": n, "complete": False})
        obj.attrs.update({"n_items": n, "complete": False})
    public.consolidate()  # readers must not see the old shape
    # The old last chunk was partial; it is rewritten whole (with identical bytes for its
    # old items), so its marker no longer means done.
    last = (old // public.chunk_items) * public.chunk_items
    if last < old:
        fs, path = filesystem(_marker(keystore.url, last, old), job.options)
        if fs.exists(path):
            fs.rm(path)


# ---------------------------------------------------------------------------
# 2. one region
# ---------------------------------------------------------------------------


def encode_region(job: EncodeJob, plan: Plan, start: int, stop: int) -> RegionManifest:
    marker = _marker(plan.keystore_url, start, stop)
    fs, mpath = filesystem(marker, job.options)
    if fs.exists(mpath):
        return RegionManifest(**{**json.loads(fs.cat_file(mpath)), "skipped": True})
    t0, started = time.perf_counter(), time.time()
    model, model_id, noise, secret, provider = _resources(job)
    store = open_image_store(job.images, job.options)
    images = store.read(slice(start, stop))
    ids = store.item_ids()[start:stop].tolist()
    enc = encode_images(model, noise, secret, model_id, images, ids, job.config.micro_batch)
    public = PublicStore.open(plan.public_url, job.options, mode="r+")
    public.write_region(start, enc.mask, enc.values, ids)
    keystore = Keystore.open(plan.keystore_url, provider, job.options, mode="r+")
    keystore.write_row(start // plan.chunk_items, enc.keys)
    digest = hashlib.sha256(np.packbits(enc.mask).tobytes() + enc.values.tobytes())
    manifest = RegionManifest(start, stop, stop - start, digest.hexdigest(),
                              time.perf_counter() - t0, started, time.time())
    # Written last: its presence means both the public chunk and the key row are in.
    write_bytes(marker, json.dumps(manifest.to_dict()).encode(), job.options)
    return manifest


# ---------------------------------------------------------------------------
# 3. finish
# ---------------------------------------------------------------------------


def finish(job: EncodeJob, plan: Plan) -> None:
    regions = [(s, min(s + plan.chunk_items, plan.n_items))
               for s in range(0, plan.n_items, plan.chunk_items)]
    done = _done(job, plan.keystore_url, regions)
    missing = [r for r in regions if r not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} regions are not done (first {missing[0]}); "
                           "re-run encode to finish them")
    _, _, _, _, provider = _resources(job)
    PublicStore.open(plan.public_url, job.options, mode="r+").finish()
    Keystore.open(plan.keystore_url, provider, job.options, mode="r+").finish()
    pointer = json.dumps({"version": plan.version, "n_items": plan.n_items}).encode()
    for root in (job.public_root, job.keys_root):
        write_bytes(join(root, CURRENT), pointer, job.options)


def current_version(root: str, storage_options: dict | None = None) -> str:
    """URL of the store version the root's ``current`` pointer names."""
    fs, path = filesystem(join(root, CURRENT), storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{root} has no complete store yet (no {CURRENT})")
    return join(root, json.loads(fs.cat_file(path))["version"])


__all__ = ["EncodeJob", "Plan", "RegionManifest", "current_version", "encode_region",
           "ensure_noise_model", "finish", "lease_url", "prepare", "target_version"]
