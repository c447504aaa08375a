"""What ambiguation and key coding add to encoding, per image, on this CPU.

    python benchmarks/bench_privacy.py [--preset paper] [--items 64] [--threads 1]
                                       [--precision fp32|bf16|auto]

Times, on the same images and thread count, the stages of ``encode_images`` (its own
stage timer): the encoder's forward pass (images -> bottlenecks), ambiguation (decoys,
fakes, quantization), sealing, key coding, and the whole call; best of three runs after
a warm-up. The noise model is fitted on random images: its cost does not depend on
what it learned.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from imambig.access.secrets import Secret
from imambig.config import preset
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel, fit_noise_model
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import resolve
from imambig.stages.encode.images import StageTimes, encode_images
from imambig.stores.loader import to_tensor

KEY = Secret(b"k" * 32)  # a fixed owner secret: the benchmark measures time, not secrecy


@torch.no_grad()
def random_setup(preset_name: str, items: int, precision: str, threads: int
                 ) -> tuple[SparseAutoencoder, np.ndarray, NoiseModel, DecoyMap]:
    """A model with random weights, ``items`` random images, a noise fit on them and the
    fixed owner's decoy map, torch on ``threads`` threads: what the timings need (they
    do not depend on what a model learned)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SparseAutoencoder(preset(preset_name)).eval()
    c = model.config
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (items, c.image_height, c.image_width, 3), dtype=np.uint8)
    noise = fit_noise_model(model, "bench", [to_tensor(images)], k_public=2 * c.k,
                            precision=precision)
    return model, images, noise, DecoyMap.for_owner(noise, KEY)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    a = p.parse_args()
    precision = resolve(a.precision)
    model, images, noise, decoys = random_setup(a.preset, a.items, precision, a.threads)
    c = model.config
    with torch.no_grad():
        runs = []
        for _ in range(4):  # the first warms caches up
            times = StageTimes()
            t0 = time.perf_counter()
            encode_images(model, noise, decoys, images, precision, a.micro_batch, times)
            runs.append((time.perf_counter() - t0, times))
        total, best = min(runs[1:], key=lambda r: r[0])
    n = a.items
    print(f"preset={a.preset} items={n} threads={a.threads} micro_batch={a.micro_batch} "
          f"precision={precision} L={c.n_maps} m={c.code_length} k={c.k} k'={2 * c.k}")
    print("| step | ms / image | share of encoder forward |")
    print("|---|---|---|")
    for name, t in (("encoder forward (bottlenecks)", best.forward),
                    ("ambiguation (decoys, fakes, quantizer)", best.mechanism),
                    ("sealing", best.seal), ("key coding", best.keys),
                    ("encode_images (all of it)", total)):
        print(f"| {name} | {1e3 * t / n:.2f} | {100 * t / best.forward:.1f} % |")
    extra = best.mechanism + best.seal + best.keys
    print(f"\nambiguation + sealing + key coding: {100 * extra / best.forward:.1f} % of the "
          "encoder's forward pass")


if __name__ == "__main__":
    main()
