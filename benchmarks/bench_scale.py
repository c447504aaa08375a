"""A CelebA-sized collection through the encoder: throughput over time, memory per worker.

    python benchmarks/bench_scale.py [--items 202599] [--preset small] [--workers N]
                                     [--region-items 1024] [--precision auto] [--out DIR]

1. Writes an image store of ``--items`` generated images at the preset's size straight
   into chunk-aligned regions (ingestion of files is ``bench_pipeline.py``'s business).
2. Saves a model with random weights (speed does not depend on what it learned).
3. Encodes the whole store into a local public store and keystore the way ``imambig
   encode`` does (``run_encode`` over ``DaskRegions``) with ``--workers`` Dask worker
   processes (each a two-stage pipeline: one region in the forward pass while another
   is in the mechanism, reads or writes),
   after the noise fit (done once per model, like training).
   Meanwhile a sampler asks every worker for its resident memory every few seconds.

Prints throughput per tenth of the run (from the regions' own start and end times), the
first and last tenth side by side, and each worker's RSS over time and peak (getrusage).
Flat throughput and a flat RSS curve are what a long bulk run needs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import resource
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from imambig.config import EncodeConfig, preset
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import save_model
from imambig.model.precision import resolve
from imambig.stages.encode.dask_cluster import default_workers
from imambig.stages.encode.dask_regions import DaskRegions, local_cluster
from imambig.stages.encode.driver import run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stores.image_store import ImageStoreWriter
from imambig.stores.location import Location
from imambig.stores.splits import split_code


def _images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` smooth colour fields with a blob and mild noise (compress like photos do,
    not like white noise)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b, c = (rng.uniform(0.2, 1.0, (n, 1, 1)).astype(np.float32) for _ in range(3))
    cx, cy = (rng.uniform(0.3, 0.7, (n, 1, 1)).astype(np.float32) for _ in range(2))
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
    img = np.stack([a * xx, b * yy, c * blob], axis=-1)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (img.clip(0, 1) * 255).astype(np.uint8)


def write_store(location: Location, n: int, size: int, chunk: int) -> None:
    writer = ImageStoreWriter.create(location, n_items=n, height=size, width=size,
                                     chunk_items=chunk, attrs={"source": "generated"})
    rng = np.random.default_rng(0)
    for start in tqdm(range(0, n, chunk), desc="writing images", unit="region"):
        writer.write_images(start, _images(rng, min(chunk, n - start), size))
    splits = np.full(n, split_code("train"), dtype=np.uint8)
    names = [f"gen{i:06d}" for i in range(n)]
    # no source files: each item's "source digest" is its name's (unique, like a file's)
    digests = np.array([hashlib.sha256(name.encode()).hexdigest() for name in names])
    writer.write_labels(np.array(names), splits, np.arange(n, dtype=np.int64) // 30, digests)
    writer.finish(source="generated")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class Sampler(threading.Thread):
    """Every ``every`` seconds, each worker's RSS: {worker: [(t, bytes)]}."""

    def __init__(self, cluster: Any, every: float) -> None:
        super().__init__(daemon=True)
        from distributed import Client

        self.client = Client(cluster)  # with the cluster's own TLS credentials
        self.every = every
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                for worker, rss in self.client.run(_rss).items():
                    self.samples.setdefault(worker, []).append((time.time(), rss))
            except Exception:  # a worker restarting: skip this sample
                continue


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=202_599, help="CelebA's image count")
    p.add_argument("--preset", default="small")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="Dask worker processes (default: imambig's, one per core)")
    p.add_argument("--region-items", type=int, default=1024)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--out", default=None, help="working folder (default: a temporary one, "
                   "removed at the end)")
    a = p.parse_args()
    for k in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY"):
        os.environ.setdefault(k, base64.b64encode(secrets.token_bytes(32)).decode())
    cfg = preset(a.preset)
    precision = resolve(a.precision)
    root = Path(a.out or tempfile.mkdtemp(prefix="imambig-scale-"))
    images = Location(str(root / "images"))
    t0 = time.perf_counter()
    write_store(images, a.items, cfg.image_height, a.region_items)
    t_write = time.perf_counter() - t0
    torch.manual_seed(0)
    model_location = Location(str(root / "model"))
    save_model(model_location, SparseAutoencoder(cfg).eval(), {"note": "random weights"})
    job = EncodeJob(images=images, model=model_location,
                    public_root=Location(str(root / "public")),
                    keys_root=Location(str(root / "keys")),
                    config=EncodeConfig(region_items=a.region_items, precision=precision))

    cluster = local_cluster(a.workers)
    sampler = Sampler(cluster, a.sample_every)
    sampler.start()
    try:
        report = run_encode(job, DaskRegions(cluster=cluster), progress=True)
        peaks = sampler.client.run(_peak_rss)
    finally:
        sampler.stop.set()
        sampler.join()
        sampler.client.close()
        cluster.close()

    ms = sorted((m for m in report.manifests if not m.skipped), key=lambda m: m.finished)
    start, end = min(m.started for m in ms), max(m.finished for m in ms)
    n = sum(m.items for m in ms)
    tenths = np.linspace(start, end, 11)
    print(f"\npreset={a.preset} items={n:,} regions={len(ms)} x {a.region_items} "
          f"workers={a.workers} (2 pipeline stages on 1 torch thread each) precision={precision} cores={os.cpu_count()} "
          f"torch={torch.__version__}")
    print(f"image store written in {t_write:.0f} s; encode {report.seconds:.0f} s wall "
          f"(noise fit, cluster start and stores included), {end - start:.0f} s from the "
          f"first region's start to the last one's end: {n / (end - start):.1f} images/s")
    print("\n| tenth of the run | minutes | images done in it | images/s |")
    print("|---|---|---|---|")
    rates = []
    for i in range(10):
        lo, hi = tenths[i], tenths[i + 1]
        # Items of each region spread evenly over its own span.
        done = sum(m.items * max(0.0, min(hi, m.finished) - max(lo, m.started))
                   / max(m.finished - m.started, 1e-9) for m in ms)
        rates.append(done / (hi - lo))
        print(f"| {i + 1} | {(lo - start) / 60:.1f}-{(hi - start) / 60:.1f} | {done:,.0f} | "
              f"{rates[-1]:.1f} |")
    print(f"\nfirst tenth {rates[0]:.1f} images/s, last tenth {rates[-1]:.1f} images/s "
          f"({rates[-1] / rates[0]:.2f}x)")
    times = report.throughput.stages().to_dict()
    print("\nWorker milliseconds per image, by stage: " + ", ".join(
        f"{name} {1e3 * t / n:.2f}" for name, t in times.items()))
    print("\n| worker | RSS first sample MiB | RSS at half time MiB | RSS last sample MiB "
          "| peak RSS MiB (getrusage) |")
    print("|---|---|---|---|---|")
    for worker, peak in sorted(peaks.items()):
        s = [r for t, r in sampler.samples.get(worker, []) if start <= t <= end] or [0]
        print(f"| {worker} | {s[0] / 2**20:.0f} | {s[len(s) // 2] / 2**20:.0f} | "
              f"{s[-1] / 2**20:.0f} | {peak / 2**20:.0f} |")
    if not a.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
