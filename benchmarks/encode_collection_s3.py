"""A whole collection onto real S3 with 2 Dask workers, validated and spot-checked.

    python benchmarks/encode_collection_s3.py --source ../shared/data/celeba-6k \
        --model runs/small-model [--workers 2] [--check 64]

Starts SeaweedFS on 127.0.0.1, ingests the source into an image store on S3 at the
model's image size, encodes it with ``--workers`` single-threaded Dask workers, runs the
store validator on the public store and the keystore, and re-encodes ``--check`` random
items one at a time to confirm each one's public record and key equal those of the bulk
run. Prints a table.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig, IngestConfig
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel
from imambig.model.checkpoint import load_model
from imambig.stages.encode.dask_regions import DaskRegions
from imambig.stages.encode.driver import run_encode
from imambig.stages.encode.images import encode_images
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.ingest import ingest
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from infra.seaweedfs import SeaweedS3
from storage_schemas.validate import validate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-items", type=int, default=256)
    p.add_argument("--check", type=int, default=64)
    p.add_argument("--crop", type=int, default=None)
    a = p.parse_args()
    for k in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY"):
        os.environ.setdefault(k, base64.b64encode(secrets.token_bytes(32)).decode())
    model_location = Location(a.model)
    model, info, _ = load_model(model_location)
    c = model.config
    tmp = Path(tempfile.mkdtemp(prefix="imambig-collection-"))
    rows = []
    with SeaweedS3(tmp / "s3") as s3:
        opts = s3.storage_options()
        imgs, pub, keys = (s3.create_bucket(b) for b in ("images", "public", "keys"))
        images = Location(f"{imgs}/collection", opts)
        t = time.perf_counter()
        rep = ingest(Location(a.source), images,
                     IngestConfig(height=c.image_height, width=c.image_width, crop=a.crop,
                                  split="identity:0.8", workers=1))
        rows.append(("ingest to S3", rep.written, time.perf_counter() - t))
        job = EncodeJob(images=images, model=model_location,
                        public_root=Location(f"{pub}/collection", opts),
                        keys_root=Location(f"{keys}/collection", opts),
                        config=EncodeConfig(region_items=a.chunk_items))
        t = time.perf_counter()
        report = run_encode(job, DaskRegions(n_workers=a.workers), progress=False)
        rows.append((f"encode to S3, {report.workers} workers x 1 thread", report.encoded,
                     time.perf_counter() - t))
        checks = [validate(store) for store in (report.plan.public, report.plan.keystore)]

        torch.set_num_threads(1)
        store = open_image_store(images)
        noise = NoiseModel.load(model_location.join(report.plan.noise_file), model.config)
        public = PublicStore.open(report.plan.public)
        owner = Secrets()
        ks = Keystore.open(report.plan.keystore, LocalKeyProvider.from_secrets(owner))
        decoys = DecoyMap.for_owner(noise, owner.owner_secret)
        picks = np.sort(np.random.default_rng(0).choice(store.n_items, a.check, replace=False))
        equal = 0
        for i in picks.tolist():
            alone = encode_images(model, noise, decoys, store.read(slice(i, i + 1)),
                                  report.precision)
            mask, values = public.read(np.array([i]))
            equal += int(np.array_equal(mask[0], alone.mask[0])
                         and values[0].tobytes() == alone.values[0].tobytes()
                         and ks.keys([i])[0] == alone.keys[0])
        fs, ppath = report.plan.public.filesystem()
        pub_bytes = sum(fs.du(ppath, total=False).values())

    print(f"model {info.model_id} ({c.image_height}x{c.image_width}, L={c.n_maps}, m={c.code_length},"
          f" k={c.k}, k'={2 * c.k}); {store.n_items} items; cores={os.cpu_count()}")
    print("| step | items | seconds | images/s |")
    print("|---|---|---|---|")
    for name, n, s in rows:
        print(f"| {name} | {n} | {s:.1f} | {n / s:.1f} |")
    for v in checks:
        print(f"validator: {v.summary()}")
    print(f"items encoded alone equal to the bulk run (record and key): {equal}/{len(picks)}")
    print(f"public store: {pub_bytes / store.n_items:,.0f} bytes/image")


if __name__ == "__main__":
    main()
