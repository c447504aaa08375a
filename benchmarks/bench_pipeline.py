"""Throughput of the whole path against the encoder alone, parallel scaling, and where
each image's time goes.

    python benchmarks/bench_pipeline.py [--preset small] [--items 1024] [--chunk-items 256]
                                        [--precisions fp32,bf16] [--source DIR]

Starts a real S3 server (SeaweedFS) on 127.0.0.1, then measures, on this machine, for
each precision (default: fp32, and bf16 where the CPU has bf16 kernels):

1. the encoder's own forward pass (images -> top-k codes), 1 torch thread, micro-batches
   of 8 as encoding runs them: the baseline;
2. the mechanism, the seal and key coding per image, in this process on the same images
   (``encode_images`` with its stage timer), as a share of the forward pass;
3. the full path with 1 Dask worker: JPEG files -> image store -> encode -> public store
   + keystore on S3 (ingestion, ambiguation, sealing, writes). The noise fit is done once
   per model beforehand, like training;
4. the encode step alone with 1 and with 2 workers, and the per-stage breakdown of the
   regions (read, forward, mechanism, seal, keys, write, wait for the worker's compute)
   in worker-milliseconds per image, from the region manifests.

Each encode is reported twice: wall clock including the fixed start-up (cluster, worker
imports, model load), and steady state (items / span from the first region's start to
the last region's end), which is what a long bulk run sees. Workers compute on one
thread each (a second task thread reads and writes meanwhile).

The model has random weights (throughput does not depend on what it learned). Source
images: ``--source`` (any folder, e.g. the CelebA sample), or generated JPEGs.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import platform
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imambig.config import EncodeConfig, IngestConfig, preset
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import fit_noise_model
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import save_model
from imambig.model.precision import autocast, bf16_supported
from imambig.stages.encode.dask_regions import DaskRegions
from imambig.stages.encode.driver import EncodeReport, run_encode
from imambig.stages.encode.images import StageTimes, encode_images
from imambig.stages.encode.plan import EncodeContext, EncodeJob
from imambig.stages.encode.regions import ensure_noise_model
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


def _forward_rate(model: SparseAutoencoder, x: torch.Tensor, precision: str) -> float:
    """Images/s of the encoder alone, micro-batches of 8, best of three passes."""
    best = 0.0
    with torch.inference_mode(), autocast(precision):
        model.encode(x[:8])
        for _ in range(3):
            t0 = time.perf_counter()
            for s in range(0, len(x), 8):
                model.encode(x[s : s + 8])
            best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def _in_process(model: SparseAutoencoder, images: np.ndarray, precision: str) -> StageTimes:
    """Stage times of ``encode_images`` on ``images`` in this process (best of three)."""
    noise = fit_noise_model(model, "bench", [to_tensor(images)], k_public=2 * model.config.k,
                            precision=precision)
    decoys = DecoyMap.for_owner(noise, b"bench-owner-secret-of-32-bytes!!")
    runs = []
    for _ in range(3):
        times = StageTimes()
        encode_images(model, noise, decoys, images, precision, 8, times)
        runs.append(times)
    return min(runs, key=lambda t: t.mechanism + t.seal + t.keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--items", type=int, default=1024)
    p.add_argument("--source", default=None, help="folder of images (default: generated)")
    p.add_argument("--chunk-items", type=int, default=256)
    p.add_argument("--precisions", default=None,
                   help="comma-separated (default: fp32, and bf16 where the CPU has it)")
    a = p.parse_args()
    precisions = (a.precisions.split(",") if a.precisions
                  else ["fp32", *(["bf16"] if bf16_supported() else [])])
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
    torch.set_num_threads(1)
    sample = np.random.default_rng(0).integers(0, 256, (256, cfg.image_height,
                                                        cfg.image_width, 3), dtype=np.uint8)
    rows: list[tuple[str, str, str, str]] = []
    stage_rows: list[tuple[str, str, StageTimes, int]] = []
    with SeaweedS3(tmp / "s3") as s3:
        opts = s3.storage_options()
        pub, keys = s3.create_bucket("bench-public"), s3.create_bucket("bench-keys")
        size = (cfg.image_height, cfg.image_width)

        def job(tag: str, precision: str, source: Location) -> EncodeJob:
            return EncodeJob(images=source, model=model_location,
                             public_root=Location(f"{pub}/{tag}", opts),
                             keys_root=Location(f"{keys}/{tag}", opts),
                             config=EncodeConfig(region_items=a.chunk_items,
                                                 precision=precision))

        def encode(tag: str, precision: str, workers: int, source: Location) -> EncodeReport:
            return run_encode(job(tag, precision, source), DaskRegions(n_workers=workers),
                              progress=False)

        def ingest_into(target: Location, limit: int) -> float:
            t0 = time.perf_counter()
            ingest(Location(str(src)), target,
                   IngestConfig(height=size[0], width=size[1], split="random:0.8", workers=1,
                                limit=limit))
            return time.perf_counter() - t0

        fit_images = Location(f"{pub}/fit-images", opts)
        ingest_into(fit_images, min(a.items, 256))
        for precision in precisions:
            fwd = _forward_rate(model, to_tensor(sample), precision)
            ms_fwd = 1e3 / fwd
            rows.append((precision, "encoder forward, 1 thread", f"{fwd:.1f}", "baseline"))
            alone = _in_process(model, sample, precision)
            per = {k: 1e3 * v / len(sample) for k, v in alone.to_dict().items()}
            extra = per["mechanism"] + per["seal"] + per["keys"]
            rows.append((precision, "mechanism + seal + keys, in process",
                         f"{1e3 / extra:.1f}",
                         f"{extra:.2f} ms/image = {extra / ms_fwd:.0%} of forward "
                         f"(mechanism {per['mechanism']:.2f}, seal {per['seal']:.2f}, keys "
                         f"{per['keys']:.2f})"))
            # The noise fit belongs to the model (done once, like training): not timed.
            fit = EncodeContext.open(job("fit", precision, fit_images))
            ensure_noise_model(fit, open_image_store(fit_images))

            target = Location(f"{pub}/images-{precision}", opts)
            t_ingest = ingest_into(target, a.items)
            n = open_image_store(target).n_items
            t0 = time.perf_counter()
            report = run_encode(job(f"full-{precision}", precision, target),
                                DaskRegions(n_workers=1), progress=False)
            wall = n / (t_ingest + time.perf_counter() - t0)
            steady = n / (t_ingest + _span(report))
            rows.append((precision, "ingest JPEG -> S3 image store, 1 process",
                         f"{n / t_ingest:.1f}", f"{n / t_ingest / fwd:.0%} of forward"))
            rows.append((precision, "full path, JPEG -> S3 stores, 1 worker, wall", f"{wall:.1f}",
                         f"{wall / fwd:.0%} of forward"))
            rows.append((precision, "full path, 1 worker, steady", f"{steady:.1f}",
                         f"{steady / fwd:.0%} of forward"))
            one = encode(f"one-{precision}", precision, 1, target)
            two = encode(f"two-{precision}", precision, 2, target)
            s1, s2 = n / _span(one), n / _span(two)
            rows.append((precision, "encode only, 1 worker, wall", f"{n / one.seconds:.1f}",
                         f"{n / one.seconds / fwd:.0%} of forward"))
            rows.append((precision, "encode only, 1 worker, steady", f"{s1:.1f}",
                         f"{s1 / fwd:.0%} of forward"))
            rows.append((precision, "encode only, 2 workers, wall", f"{n / two.seconds:.1f}",
                         f"{two.seconds and one.seconds / two.seconds:.2f}x of 1 worker"))
            rows.append((precision, "encode only, 2 workers, steady", f"{s2:.1f}",
                         f"{s2 / s1:.2f}x of 1 worker"))
            for label, r in (("1 worker", one), ("2 workers", two)):
                stage_rows.append((precision, label, r.throughput.stages(), n))
            pub_bytes = _bytes_under(report.plan.public)
            key_bytes = _bytes_under(report.plan.keystore)

    print(f"preset={a.preset} items={n} chunk={a.chunk_items} cores={os.cpu_count()} "
          f"torch={torch.__version__} cpu={platform.processor() or platform.machine()}")
    print("| precision | measurement | images/s | note |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    names = [f.name for f in dataclasses.fields(StageTimes)]
    print("\nWorker milliseconds per image, by stage (encode only, from the region manifests):")
    print("| precision | workers | " + " | ".join(names) + " | total |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for precision, label, times, count in stage_rows:
        values = [1e3 * getattr(times, name) / count for name in names]
        print(f"| {precision} | {label} | " + " | ".join(f"{v:.2f}" for v in values)
              + f" | {sum(values):.2f} |")
    print(f"\npublic store: {pub_bytes / n:,.0f} bytes/image (all objects incl. metadata); "
          f"keystore: {key_bytes / n:,.0f} bytes/image (incl. run state)")


if __name__ == "__main__":
    main()
