"""What ambiguation and key coding add to encoding, per image, on this CPU.

    python benchmarks/bench_privacy.py [--preset paper] [--items 32] [--threads 1]

Times, on the same images and thread count: the encoder's forward pass (images -> top-k
code), ambiguation (decoys, fakes, quantization), sealing, key coding, and the full
``encode_images`` path. The noise model is fitted on random images: its cost does not
depend on what it learned.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from imambig.access.secrets import Secret
from imambig.config import preset
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.keys import encode_keys
from imambig.mechanism.noise_model import fit_noise_model
from imambig.mechanism.seal import seal
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stages.encode_images import encode_images
from imambig.stores.loader import to_tensor

KEY = Secret(b"k" * 32)  # a fixed owner secret: the benchmark measures time, not secrecy


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = SparseAutoencoder(preset(a.preset)).eval()
    c = model.config
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.items, c.image_height, c.image_width, 3), dtype=np.uint8)
    with torch.no_grad():
        noise = fit_noise_model(model, "bench", [to_tensor(images)], k_public=2 * c.k)
        x = to_tensor(images)
        mb = a.micro_batch

        def forward() -> None:
            for s in range(0, a.items, mb):
                model.encode(x[s : s + mb])

        hs = [model.bottleneck(x[s : s + mb]) for s in range(0, a.items, mb)]

        decoys = DecoyMap.for_owner(noise, KEY)

        def amb() -> list:
            return [ambiguate(model, h, noise, decoys, sealed=False) for h in hs]

        opened = amb()
        sealed = [seal(r, decoys.seal_key) for r in opened]
        reals = np.concatenate([r.real for r in sealed])
        seals = np.concatenate([r.seals for r in sealed])
        t_fwd = best_of(forward)
        t_amb = best_of(amb)
        t_seal = best_of(lambda: [seal(r, decoys.seal_key) for r in opened])
        t_key = best_of(lambda: encode_keys(reals, seals))
        t_all = best_of(lambda: encode_images(model, noise, decoys, images, "fp32", mb))
    n = a.items
    print(f"preset={a.preset} items={n} threads={a.threads} micro_batch={mb} "
          f"L={c.n_maps} m={c.code_length} k={c.k} k'={2 * c.k}")
    print("| step | ms / image | share of encoder forward |")
    print("|---|---|---|")
    for name, t in (("encoder forward (top-k code)", t_fwd), ("ambiguation", t_amb),
                    ("sealing", t_seal), ("key coding", t_key),
                    ("encode_images (all of it)", t_all)):
        print(f"| {name} | {1e3 * t / n:.2f} | {100 * t / t_fwd:.1f} % |")
    extra = t_amb + t_seal + t_key
    print(f"\nambiguation + sealing + key coding: {100 * extra / t_fwd:.1f} % of the encoder's time "
          "(the ambiguation's own dense code W h is counted in both, so this overstates)")


if __name__ == "__main__":
    main()
