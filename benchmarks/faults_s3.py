"""Encodes to S3 through injected faults: nothing lost, stores byte-identical, the cost.

    python benchmarks/faults_s3.py [--runs 20] [--items 2000] [--rate 0.05] \
        [--model runs/small24] [--image-store runs/celeba64 | --source DIR]

Starts SeaweedFS on 127.0.0.1 and puts the first ``--items`` images on it (ingested
from ``--source``, CelebA at the model's size, or copied from an existing local
``--image-store``), then runs ``--runs`` rounds through the fault-injecting proxy
(``tests/fault_proxy.py``) at ``--rate`` faults per request, all kinds (500, 503,
reset, answer held past the read timeout, answer cut mid-body); the images are read
through it too. A round is: encode with ``--workers`` Dask workers into fresh buckets,
validate both stores, grant ``--reveal`` random items and reveal them, all through the
proxy. Each round's stores are then read directly (no faults) and compared with a
fault-free reference run: every object's bytes, and each item's record and key (a
missing or unreadable one is *lost*, a different one *corrupt*); the revealed images are
compared with a reveal from the reference stores. ``--baseline-runs`` fault-free rounds
through the same proxy (rate 0), spread among the faulty ones, give the wall time
without faults. Prints one row per round and a summary.

Without ``--model`` (and no ``runs/small24`` in the checkout), a ``tiny`` model is trained for a
minute on the ingested images.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/fault_proxy.py

from imambig.access.identity import new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.config import PRESETS, EncodeConfig, IngestConfig, TrainConfig
from imambig.model.checkpoint import load_model
from imambig.stages.encode.dask_regions import DaskRegions
from imambig.stages.encode.driver import run_encode
from imambig.stages.encode.plan import EncodeJob, Plan
from imambig.stages.ingest import ingest
from imambig.stages.share import issue_grant, reveal
from imambig.stages.train import train
from imambig.stores.image_store import ImageStoreWriter, open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from infra.seaweedfs import SeaweedS3
from storage_schemas.validate import validate
from tests.fault_proxy import FAULTS, FaultProxy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "runs" / "small24"  # the `small` model of docs/faults.md, where trained
SOURCES = (ROOT.parent / "shared" / "data" / "celeba-6k",)


@dataclasses.dataclass
class Round:
    name: str
    rate: float
    encode_s: float
    after_s: float  # validate, grant and reveal
    faults: Counter[str]
    valid: bool
    objects: int
    differing_objects: int
    lost: int
    corrupt: int
    revealed_equal: int
    revealed: int

    @property
    def total_s(self) -> float:
        return self.encode_s + self.after_s


def objects(root: Location) -> dict[str, str]:
    """sha256 of every object under ``root`` but run state (markers hold timings)."""
    fs, path = root.filesystem()
    return {f[len(path):]: hashlib.sha256(fs.cat_file(f)).hexdigest()
            for f in sorted(fs.find(path))
            if "/_state/" not in f and "/_leases/" not in f}


def items(plan: Plan, options: dict[str, Any], provider: LocalKeyProvider, n: int
          ) -> tuple[list[np.ndarray | None], list[bytes | None]]:
    """Each item's record (mask and values, flattened) and key, read directly; None
    where unreadable."""
    public = PublicStore.open(Location(plan.public.url, options))
    keystore = Keystore.open(Location(plan.keystore.url, options), provider)
    records: list[np.ndarray | None] = [None] * n
    keys: list[bytes | None] = [None] * n
    step = public.chunk_items
    for start in range(0, n, step):
        stop = min(n, start + step)
        try:
            mask, values = public.read(slice(start, stop))
            for i in range(stop - start):
                records[start + i] = np.concatenate([np.packbits(mask[i]).view(np.uint8),
                                                     values[i].view(np.uint8).ravel()])
        except Exception as err:  # counted as lost, and said why
            print(f"  records {start}:{stop} unreadable: {type(err).__name__}: {err}")
        try:
            for i, key in enumerate(keystore.keys(list(range(start, stop)))):
                keys[start + i] = key
        except Exception as err:
            print(f"  keys {start}:{stop} unreadable: {type(err).__name__}: {err}")
    return records, keys


def prepare_images(a: argparse.Namespace, height: int, width: int, target: Location) -> None:
    if a.image_store:
        src = open_image_store(Location(a.image_store))
        if (src.height, src.width) != (height, width):
            raise SystemExit(f"{a.image_store} holds {src.height}x{src.width} images; the "
                             f"model wants {height}x{width}")
        n = min(a.items, src.n_items)
        chunk = src.chunk_items
        out = ImageStoreWriter.create(target, n_items=n, height=height, width=width,
                                      chunk_items=chunk,
                                      attrs={k: v for k, v in src.attrs.items()
                                             if k in ("source", "split_spec", "seed", "crop")})
        for start in range(0, n, chunk):
            out.write_images(start, src.read(slice(start, min(n, start + chunk))))
        digests = src.source_digests()
        out.write_labels(src.item_ids()[:n], src.splits()[:n], src.identities()[:n],
                         digests[:n] if digests is not None else np.array([""] * n))
        out.finish(set_aside=0)
        return
    source = Path(a.source) if a.source else next((s for s in SOURCES if s.is_dir()), None)
    if source is None:
        raise SystemExit("no images: pass --source (CelebA folder) or --image-store")
    ingest(Location(str(source)), target,
           IngestConfig(height=height, width=width, crop=178 if "celeba" in str(source) else None,
                        split="random:0.8", workers=1, limit=a.items))


def prepare_model(a: argparse.Namespace, tmp: Path) -> tuple[Location, bool]:
    """A private copy of the model folder (encode may add its noise fit there); whether a
    tiny model is still to be trained."""
    model = Path(a.model) if a.model else (DEFAULT_MODEL if DEFAULT_MODEL.is_dir() else None)
    if model is None:
        return Location(str(tmp / "model")), True
    copy = tmp / "model"
    copy.mkdir()
    for f in model.iterdir():
        if f.is_file() and (f.name == "model.safetensors" or f.name.startswith("noise_")):
            shutil.copy2(f, copy / f.name)
    return Location(str(copy)), False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="faulty rounds")
    p.add_argument("--baseline-runs", type=int, default=5,
                   help="fault-free rounds for the wall time without faults")
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--reveal", type=int, default=20, help="items granted and revealed")
    p.add_argument("--rate", type=float, default=0.05, help="faults per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--region-items", type=int, default=EncodeConfig().region_items)
    p.add_argument("--read-timeout", type=float, default=5.0,
                   help="the client's read timeout, s (the proxy holds answers 1 s longer)")
    p.add_argument("--model", default=None, help=f"model folder (default {DEFAULT_MODEL})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image-store", default=None,
                     help="existing local image store; its first --items items are used")
    src.add_argument("--source", default=None, help="image folder to ingest (CelebA)")
    a = p.parse_args()
    for name in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY", "IMAMBIG_SIGNING_KEY"):
        os.environ.setdefault(name, base64.b64encode(secrets.token_bytes(32)).decode())
    owner = Secrets()
    provider = LocalKeyProvider.from_secrets(owner)
    signer = signing_key(owner.signing_key)
    alice = new_identity()

    tmp = Path(tempfile.mkdtemp(prefix="imambig-faults-"))
    model, untrained = prepare_model(a, tmp)
    tiny = PRESETS["tiny"]
    height, width = ((tiny.image_height, tiny.image_width) if untrained else
                     (lambda c: (c.image_height, c.image_width))(load_model(model)[0].config))
    timeouts = {"connect_timeout_s": 5.0, "read_timeout_s": a.read_timeout}
    rounds: list[Round] = []
    started = time.perf_counter()
    try:
        with SeaweedS3(tmp / "s3") as s3:
            direct = s3.storage_options()
            images_direct = Location(f"{s3.create_bucket('images')}/collection", direct)
            t = time.perf_counter()
            prepare_images(a, height, width, images_direct)
            n = open_image_store(images_direct).n_items
            print(f"{n} images of {height}x{width} on S3 in {time.perf_counter() - t:.0f} s",
                  flush=True)
            if untrained:
                train(images_direct, model, TrainConfig(model=tiny, epochs=20, minutes=1.0,
                                                        num_threads=1), progress=False)
            c = load_model(model)[0].config
            print(f"model {model}: L={c.n_maps} m={c.code_length} k={c.k}; {a.workers} Dask "
                  f"workers; regions of {a.region_items}; read timeout {a.read_timeout:g} s, "
                  f"answers held {a.read_timeout + 1:g} s; cores {os.cpu_count()}", flush=True)
            names = [str(x) for x in open_image_store(images_direct).item_ids()]

            def one_round(name: str, rate: float, seed: int
                          ) -> tuple[Round, Plan, bytes, np.ndarray]:
                tag = uuid.uuid4().hex[:10]
                with FaultProxy(s3.endpoint_url, rate=rate, seed=seed,
                                delay_s=a.read_timeout + 1) as proxy:
                    opts = {**proxy.storage_options(direct), "retry": timeouts}
                    job = EncodeJob(
                        images=Location(images_direct.url, opts), model=model,
                        public_root=Location(f"{s3.create_bucket(f'pub-{tag}')}/c", opts),
                        keys_root=Location(f"{s3.create_bucket(f'keys-{tag}')}/c", opts),
                        config=EncodeConfig(region_items=a.region_items))
                    t0 = time.perf_counter()
                    report = run_encode(job, DaskRegions(n_workers=a.workers), progress=False)
                    t1 = time.perf_counter()
                    valid = all(validate(s).ok for s in (report.plan.public,
                                                         report.plan.keystore))
                    picks = sorted(np.random.default_rng(seed).choice(
                        n, min(a.reveal, n), replace=False).tolist())
                    blob = issue_grant(job.public_root, job.keys_root, [names[i] for i in picks],
                                       alice.public_text(), provider, signer)
                    seen = reveal(blob, alice, public_text(signer), model,
                                  public=report.plan.public)
                    t2 = time.perf_counter()
                    faults = Counter({k: proxy.counts[k] for k in ("requests", *FAULTS)})
                result = Round(name, rate, t1 - t0, t2 - t1, faults, valid, 0, 0, 0, 0, 0,
                               len(picks))
                return result, report.plan, blob, seen.images

            def compare(r: Round, plan: Plan, blob: bytes, seen: np.ndarray) -> None:
                """Fill in ``r``'s checks against the reference round (the first)."""
                got = {"public": objects(Location(plan.public.url.rsplit("/", 1)[0], direct)),
                       "keys": objects(Location(plan.keystore.url.rsplit("/", 1)[0], direct))}
                r.objects = sum(len(v) for v in got.values())
                records, keys = items(plan, direct, provider, n)
                if not reference:
                    reference.update(got=got, records=records, keys=keys, plan=plan)
                want = reference
                r.differing_objects = sum(
                    len(set(got[s]) ^ set(want["got"][s]))
                    + sum(got[s][o] != want["got"][s][o] for o in set(got[s]) & set(want["got"][s]))
                    for s in got)
                for i in range(n):
                    if records[i] is None or keys[i] is None:
                        r.lost += 1
                    elif (not np.array_equal(records[i], want["records"][i])
                          or keys[i] != want["keys"][i]):
                        r.corrupt += 1
                expected = reveal(blob, alice, public_text(signer), model,
                                  public=Location(want["plan"].public.url, direct))
                r.revealed_equal = int(sum(np.array_equal(x, y) for x, y in zip(
                    seen, expected.images, strict=True)))

            reference: dict[str, Any] = {}
            print("| round | faults/requests | 500 | 503 | reset | delay | cut | encode s | "
                  "validate+grant+reveal s | valid | objects equal | lost | corrupt | "
                  "revealed equal |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            every = max(1, a.runs // max(1, a.baseline_runs - 1)) if a.baseline_runs > 1 else 0
            order = [("clean 0", 0.0)]
            done_clean = 1
            for i in range(a.runs):
                order.append((f"faulty {i + 1}", a.rate))
                if every and (i + 1) % every == 0 and done_clean < a.baseline_runs:
                    order.append((f"clean {done_clean}", 0.0))
                    done_clean += 1
            for k, (name, rate) in enumerate(order):
                r, plan, blob, seen = one_round(name, rate, a.seed + k)
                compare(r, plan, blob, seen)
                rounds.append(r)
                f = r.faults
                print(f"| {name} | {sum(f[x] for x in FAULTS)}/{f['requests']} | "
                      + " | ".join(str(f[x]) for x in FAULTS)
                      + f" | {r.encode_s:.1f} | {r.after_s:.1f} | {r.valid} | "
                      f"{r.objects - r.differing_objects}/{r.objects} | {r.lost} | {r.corrupt} | "
                      f"{r.revealed_equal}/{r.revealed} |", flush=True)
                if k:  # keep the reference; free the server's volumes
                    for root in (plan.public, plan.keystore):
                        s3.delete_bucket(root.url.removeprefix("s3://").split("/", 1)[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    faulty = [r for r in rounds if r.rate > 0]
    clean = [r for r in rounds if r.rate == 0]
    kinds = Counter[str]()
    for r in faulty:
        kinds.update(r.faults)
    print()
    print(f"{len(faulty)} faulty rounds at {a.rate:.0%} of {kinds['requests']:,} requests: "
          f"{sum(kinds[x] for x in FAULTS):,} faults injected ("
          + ", ".join(f"{x} {kinds[x]}" for x in FAULTS) + ")")
    print(f"items checked: {sum(n for _ in faulty):,}; lost {sum(r.lost for r in faulty)}, "
          f"corrupt {sum(r.corrupt for r in faulty)}; objects differing from the fault-free "
          f"run: {sum(r.differing_objects for r in faulty)}; stores valid: "
          f"{sum(r.valid for r in faulty)}/{len(faulty)}; revealed images equal: "
          f"{sum(r.revealed_equal for r in faulty)}/{sum(r.revealed for r in faulty)}")
    for what, get in (("encode", lambda r: r.encode_s), ("round", lambda r: r.total_s)):
        base = statistics.median(get(r) for r in clean)
        hit = statistics.median(get(r) for r in faulty)
        print(f"{what} wall time, median: {base:.1f} s without faults ({len(clean)} rounds), "
              f"{hit:.1f} s with ({len(faulty)} rounds): overhead {100 * (hit / base - 1):+.0f} %"
              f" (means {statistics.mean(get(r) for r in clean):.1f} / "
              f"{statistics.mean(get(r) for r in faulty):.1f} s)")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
