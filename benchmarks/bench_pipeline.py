"""Throughput of the whole path against the encoder alone, and parallel scaling.

    python benchmarks/bench_pipeline.py [--preset paper] [--items 512] [--source DIR]
                                        [--precision fp32|bf16]

Starts a real S3 server (SeaweedFS) on 127.0.0.1, then measures, on this machine:

1. the encoder's own forward pass (images -> top-k codes), 1 torch thread;
2. the full path with 1 Dask worker x 1 thread: JPEG files -> image store -> encode ->
   public store + keystore on S3 (ingestion, cluster start-up, ambiguation, key sealing,
   writes). The noise fit is done once per model beforehand, like training;
3. the encode step alone with 1 and with 2 workers x 1 thread.

Each encode is reported twice: wall clock including the fixed start-up (cluster, worker
imports, model load), and steady state (items / span from the first region's start to
the last region's end), which is what a long bulk run sees.
4. bytes per image in the public store and in the keystore (real objects on S3).

The model has random weights (throughput does not depend on what it learned). Source
images: ``--source`` (any folder, e.g. the CelebA sample), or generated JPEGs.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imambig.config import EncodeConfig, IngestConfig, preset
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import save_model
from imambig.model.precision import autocast
from imambig.stages.dask_regions import DaskRegions
from imambig.stages.encode_driver import EncodeReport, run_encode
from imambig.stages.encode_regions import EncodeContext, EncodeJob, ensure_noise_model
from imambig.stages.ingest import ingest
from imambig.stores.image_store import open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location
from infra.seaweedfs import SeaweedS3


def _jpegs(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1, 3)
        img = np.stack([a * xx, b * yy, c * (1 - xx)], -1) + rng.normal(0, 0.05, (size, size, 3))
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg")


def _span(report) -> float:
    """Seconds from the first region's start to the last region's end."""
    ms = [m for m in report.manifests if not m.skipped]
    return max(m.finished for m in ms) - min(m.started for m in ms)


def _bytes_under(location: Location) -> int:
    fs, path = location.filesystem()
    return sum(fs.du(path, total=False).values()) if fs.exists(path) else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--items", type=int, default=512)
    p.add_argument("--source", default=None, help="folder of images (default: generated)")
    p.add_argument("--chunk-items", type=int, default=64)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="the encoder's arithmetic, forward pass and encodes alike")
    a = p.parse_args()
    for k in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY"):
        os.environ.setdefault(k, base64.b64encode(secrets.token_bytes(32)).decode())
    cfg = preset(a.preset)
    tmp = Path(tempfile.mkdtemp(prefix="imambig-bench-"))
    src = Path(a.source) if a.source else tmp / "jpegs"
    if not a.source:
        _jpegs(src, a.items, 178)
    torch.manual_seed(0)
    model = SparseAutoencoder(cfg).eval()
    model_location = Location(str(tmp / "model"))
    save_model(model_location, model, {"note": "random weights for benchmarking"})

    rows: list[tuple[str, float, str]] = []
    torch.set_num_threads(1)
    x = to_tensor(np.random.default_rng(0).integers(0, 256, (64, cfg.image_height,
                                                    cfg.image_width, 3), dtype=np.uint8))
    with torch.inference_mode(), autocast(a.precision):
        model.encode(x[:8])
        t0 = time.perf_counter()
        for s in range(0, 64, 8):
            model.encode(x[s : s + 8])
        fwd = 64 / (time.perf_counter() - t0)
    rows.append(("encoder forward, 1 thread", fwd, "baseline"))

    with SeaweedS3(tmp / "s3") as s3:
        opts = s3.storage_options()
        pub, keys = s3.create_bucket("bench-public"), s3.create_bucket("bench-keys")
        images = Location(f"{pub}/images", opts)
        size = (cfg.image_height, cfg.image_width)

        def job(tag: str) -> EncodeJob:
            return EncodeJob(images=images, model=model_location,
                             public_root=Location(f"{pub}/{tag}", opts),
                             keys_root=Location(f"{keys}/{tag}", opts),
                             config=EncodeConfig(region_items=a.chunk_items,
                                                 precision=a.precision))

        def encode(tag: str, workers: int) -> EncodeReport:
            return run_encode(job(tag), DaskRegions(n_workers=workers), progress=False)

        # The noise fit belongs to the model (done once, like training): not timed.
        fit_images = Location(f"{pub}/fit-images", opts)
        ingest(Location(str(src)), fit_images,
               IngestConfig(height=size[0], width=size[1], split="random:0.8", workers=1,
                            limit=min(a.items, 256)))
        fit = EncodeContext.open(dataclasses.replace(job("fit"), images=fit_images))
        ensure_noise_model(fit, open_image_store(fit_images))

        t0 = time.perf_counter()
        ingest(Location(str(src)), images,
               IngestConfig(height=size[0], width=size[1], split="random:0.8", workers=1,
                            limit=a.items))
        n = open_image_store(images).n_items
        t_ingest = time.perf_counter() - t0
        report = encode("full", 1)
        full = n / (time.perf_counter() - t0)
        steady_full = n / (t_ingest + _span(report))
        rows.append(("full path, JPEG -> S3 stores, 1x1, wall", full, f"{full / fwd:.0%} of forward"))
        rows.append(("full path, 1x1, steady state", steady_full,
                     f"{steady_full / fwd:.0%} of forward"))

        one, two = encode("one", 1), encode("two", 2)
        r1, r2 = n / one.seconds, n / two.seconds
        s1, s2 = n / _span(one), n / _span(two)
        rows.append(("encode only, 1 worker x 1 thread, wall", r1, f"{r1 / fwd:.0%} of forward"))
        rows.append(("encode only, 1 worker x 1 thread, steady", s1, f"{s1 / fwd:.0%} of forward"))
        rows.append(("encode only, 2 workers x 1 thread, wall", r2, f"{r2 / r1:.2f}x of 1 worker"))
        rows.append(("encode only, 2 workers x 1 thread, steady", s2,
                     f"{s2 / s1:.2f}x of 1 worker"))
        pub_bytes = _bytes_under(report.plan.public)
        key_bytes = _bytes_under(report.plan.keystore)

    print(f"preset={a.preset} items={n} chunk={a.chunk_items} cores={os.cpu_count()} "
          f"precision={a.precision} torch={torch.__version__}")
    print("| measurement | images/s | note |")
    print("|---|---|---|")
    for name, ips, note in rows:
        print(f"| {name} | {ips:.1f} | {note} |")
    print(f"\npublic store: {pub_bytes / n:,.0f} bytes/image (all objects incl. metadata); "
          f"keystore: {key_bytes / n:,.0f} bytes/image (incl. run state)")


if __name__ == "__main__":
    main()
