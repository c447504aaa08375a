"""Model throughput on this machine: encode/decode images/s, the batched grouped layer
against a per-group loop, training images/s and peak memory. Prints a table.

    python benchmarks/bench_model.py [--preset paper] [--batch 32] [--threads N]
                                     [--precisions fp32,bf16]

Each measurement runs in a fresh process so its peak RSS is its own. Encode, decode and
training run once per precision (bf16: autocast, as ``--precision bf16`` runs them); the
kernel line says whether this CPU has native bf16 units (oneDNN) or emulates them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import time

import torch

from imambig.config import preset
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.layers.grouped_linear import LoopGroupedLinear
from imambig.model.precision import autocast, bf16_supported


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timeit(fn, min_time: float = 3.0, warmup: int = 1) -> float:
    """Seconds per call, repeating until ``min_time`` has passed."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def _model(name: str, loop: bool) -> SparseAutoencoder:
    torch.manual_seed(0)
    model = SparseAutoencoder(preset(name)).eval()
    if loop:
        c = model.config
        looped = LoopGroupedLinear(c.n_maps, c.bottleneck_size, c.code_length)
        looped.load_state_dict(model.linear.state_dict())
        model.linear = looped
    return model


def measure(task: str, name: str, batch: int, threads: int, precision: str = "fp32"
            ) -> tuple[float, float]:
    """Returns (images/s, peak RSS MiB) of one task in this (fresh) process."""
    torch.set_num_threads(threads)
    with autocast(precision):
        return _measure(task, name, batch)


def _measure(task: str, name: str, batch: int) -> tuple[float, float]:
    c = preset(name)
    loop = task.endswith("-loop")
    model = _model(name, loop)
    x = torch.rand(batch, 3, c.image_height, c.image_width)
    with torch.no_grad():
        z = model.encode(x)
        h = model.bottleneck(x)
    if task.startswith("encode"):
        with torch.inference_mode():
            sec = _timeit(lambda: model.encode(x))
    elif task.startswith("decode"):
        with torch.inference_mode():
            sec = _timeit(lambda: model.decode(z))
    elif task.startswith("layer"):
        with torch.inference_mode():
            sec = _timeit(lambda: model.linear.transpose(model.linear(h)), min_time=1.0)
    elif task == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            logits, _ = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, x)
            opt.zero_grad()
            loss.backward()
            opt.step()

        sec = _timeit(step, min_time=5.0)
    else:
        raise ValueError(task)
    return batch / sec, _peak_mib()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--precisions", default="fp32,bf16",
                   help="comma list: encode, decode and training run once per precision")
    a = p.parse_args()

    rows = [
        ("grouped layer fwd+transposed, batched", "layer", a.batch, ("fp32",)),
        ("grouped layer fwd+transposed, loop", "layer-loop", a.batch, ("fp32",)),
        ("encode, batched grouped layer", "encode", a.batch, tuple(a.precisions.split(","))),
        ("encode, per-group loop", "encode-loop", a.batch, ("fp32",)),
        ("decode, batched grouped layer", "decode", a.batch, tuple(a.precisions.split(","))),
        ("decode, per-group loop", "decode-loop", a.batch, ("fp32",)),
        ("train step (Adam, BCE)", "train", a.train_batch, tuple(a.precisions.split(","))),
    ]
    native = bf16_supported()
    print(f"preset={a.preset} threads={a.threads} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} "
          f"bf16 kernels: {'oneDNN native (AVX-512 BF16/AMX)' if native else 'emulated'}")
    print(f"| {'measurement':40s} | precision | batch | images/s | vs fp32 | peak RSS MiB |")
    print(f"|{'-' * 42}|-----------|-------|----------|---------|--------------|")
    ctx = mp.get_context("spawn")
    for label, task, batch, precisions in rows:
        base = None
        for precision in precisions:
            with ctx.Pool(1) as pool:
                ips, mib = pool.apply(measure, (task, a.preset, batch, a.threads, precision))
            base = base or ips
            print(f"| {label:40s} | {precision:9s} | {batch:5d} | {ips:8.1f} | "
                  f"{ips / base:6.2f}x | {mib:12.0f} |", flush=True)


if __name__ == "__main__":
    main()
