"""The mechanism's correctly rounded products: how many, how long, how many need the
exact sum.

    python benchmarks/bench_exact_products.py [--preset small] [--items 64] [--threads 1]
                                              [--precision auto]

Every float64 matrix product the mechanism does per item (``imambig.mechanism.
exact_float``): the grouped layer on the bottleneck and on the decoy, the principal
coordinates (to and from), the decoy's rotation and its way back, and the secret
projections. Prints their multiply-adds per image, the time of the bare float64 products
(``a @ b``, best of five) and of the correctly rounded ones, per image; and, for the one
long sum (the principal coordinates, L*n terms), how many outputs the float64 sum leaves
undecided with one bound over the whole sum and with the bound of sums in blocks
(``exact_float.BLOCK``). Random weights and a noise fit on random images
(``bench_privacy.random_setup``): the counts and times do not depend on what the model
learned.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from bench_privacy import random_setup  # benchmarks/ is this script's folder

from imambig.mechanism import exact_float
from imambig.model.precision import resolve
from imambig.stages.encode.images import bottlenecks


def _best(f: Callable[[], object], repeats: int = 5) -> float:
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    a = p.parse_args()
    precision = resolve(a.precision)
    # the noise is fitted on 256 images at least, as bench_privacy's default run does
    model, images, _, dm = random_setup(a.preset, max(a.items, 256), precision, a.threads)
    with torch.no_grad():
        h = bottlenecks(model, images[: a.items], precision)
        g, _ = dm.coordinates(h)
        x = h.flatten(1) - dm.mean
        weight = exact_float._weights(model.linear.weight)
        # (name, left operand, right operand, how often per item)
        products = [
            ("grouped layer (bottleneck and decoy)", h.transpose(0, 1), weight, 2),
            ("principal coordinates", x, dm._exact["to_g"], 1),
            ("back from coordinates (residual and decoy)", g, dm._exact["from_g"], 2),
            ("decoy rotation", g, dm._exact["rotate"], 1),
            ("secret projections", g, dm._exact["project"], 1),
        ]
        n = len(h)
        print(f"preset={a.preset} items={n} threads={a.threads} precision={precision} "
              f"principal components={g.shape[1]}")
        print("| product | multiply-adds / image | float64 a @ b ms / image "
              "| correctly rounded ms / image |")
        print("|---|---|---|---|")
        total = [0.0, 0.0, 0.0]
        for name, left, right, times in products:
            a64 = left.float().double()
            macs = times * left[..., 0].numel() * right.value.shape[-2] * right.value.shape[-1] / n
            bare = times * _best(lambda a64=a64, right=right: a64 @ right.value) / n
            exact = times * _best(lambda left=left, right=right: exact_float.matmul(left, right)) / n
            total = [total[0] + macs, total[1] + bare, total[2] + exact]
            print(f"| {name} | {macs / 1e6:.2f} M | {1e3 * bare:.3f} | {1e3 * exact:.3f} |")
        print(f"| all | {total[0] / 1e6:.2f} M | {1e3 * total[1]:.3f} | {1e3 * total[2]:.3f} |")
        print(f"\nfloat64 multiply-adds per second, bare products: {total[0] / total[1] / 1e9:.1f} G")

        # The long sum: outputs whose float64 sum does not decide the rounding.
        a64 = x.float().double()
        right = dm._exact["to_g"]
        bound = exact_float._norms(a64, -1).unsqueeze(-1) * right.norms.unsqueeze(-2)
        k = a64.shape[-1]
        r_one = a64 @ right.value
        r_blocked, counted = exact_float._blocked(a64, right.value)
        _, one = exact_float._settle(r_one, bound * ((k + 2) * exact_float._EPS64))
        _, blocked = exact_float._settle(r_blocked, bound * ((counted + 2) * exact_float._EPS64))
        print(f"principal coordinates ({k} terms, {r_one.numel()} outputs): undecided with one "
              f"bound {int(one.sum())}, in blocks of {exact_float.BLOCK} {int(blocked.sum())}")


if __name__ == "__main__":
    main()
