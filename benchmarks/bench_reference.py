"""`paper`'s encoder against the paper's reference encoder, side by side in one process.

    python benchmarks/bench_reference.py --reference CHECKOUT [--batch 32] [--threads 2]
                                         [--repeats 3] [--rounds 2]

CHECKOUT is a checkout of the paper's code (its ``models.py``); nothing of it is in this
repository. Both networks hold the same weights (copied by role, ``paper`` has the
reference's slope), see the same input batch, and run under the same precision: fp32,
then bfloat16 autocast (where the CPU has native bf16 kernels, unless asked). Each
round calls the reference and ``paper`` in turn ``--repeats`` times and keeps each one's
best call, so both see the same load. The first lines check that the two
compute the same codes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from reference_checkout import import_reference, reference_twin

from imambig.config import preset
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import autocast, bf16_supported
from imambig.model.reference import seeded_state


def _best_interleaved(fns: list, repeats: int) -> list[float]:
    """Best seconds per call of each of ``fns``, calling them in turn ``repeats`` times,
    so a slow spell of a shared machine hits both sides alike."""
    for fn in fns:
        fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _support(z: torch.Tensor) -> torch.Tensor:
    return z != 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reference", required=True, help="checkout of the paper's code")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precisions", default=None,
                   help="comma list (default: fp32,bf16 with native bf16 kernels, else fp32: "
                        "emulated bf16 is many times slower and says nothing)")
    a = p.parse_args()
    a.precisions = a.precisions or ("fp32,bf16" if bf16_supported() else "fp32")
    torch.set_num_threads(a.threads)
    models = import_reference(a.reference)
    c = preset("paper")
    ours = SparseAutoencoder(c).eval()
    ours.load_state_dict(seeded_state(ours, 0))
    ref = reference_twin(models, ours)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((a.batch, 3, c.image_height, c.image_width), np.float32))

    print(f"threads={a.threads} batch={a.batch} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} "
          f"bf16 kernels: {'oneDNN native' if bf16_supported() else 'emulated'}")
    with torch.inference_mode():
        z_ref, z_ours = ref.encoder(x), ours.encode(x)
        same = (_support(z_ref) == _support(z_ours)).all(-1).float().mean().item()
        diff = (ref.decoder(z_ref) - ours.decode_logits(z_ref)).abs().max().item()
    print(f"fp32 check: maps with identical support {same:.4f}; decoder max |difference| "
          f"{diff:.2e}")

    print("| precision | round | reference encoder images/s | paper encode images/s | ratio |")
    print("|---|---|---|---|---|")
    for precision in a.precisions.split(","):
        for r in range(a.rounds):
            with torch.inference_mode(), autocast(precision):
                t_ref, t_ours = _best_interleaved(
                    [lambda: ref.encoder(x), lambda: ours.encode(x)], a.repeats)
            print(f"| {precision} | {r + 1} | {a.batch / t_ref:.1f} | {a.batch / t_ours:.1f} | "
                  f"{t_ref / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
