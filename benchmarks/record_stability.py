"""How many records change when the same images are encoded under other CPU kernels.

A sealed record is a keyed hash of the ambiguated code, so a one-ulp difference that
moves any decision (a top-k near-tie, a fake's position, a value next to a quantizer
step) publishes an unrelated record. This prints, per precision and per kernel
setting, the share of items whose bottleneck, record or key differs from this
machine's native run, for the same images, model and noise fit:

- ``bottleneck``: the encoder's output differs in any element;
- ``record (same h)``: the mechanism, seal and key coding run under the setting on the
  *native* bottlenecks (what ``tests/golden`` checks on every machine);
- ``record``: the whole encoding under the setting (encoder and mechanism).

Kernel settings stand for other machine kinds on this one: ``avx2`` restricts ATen,
oneDNN and MKL to AVX2 (on a Zen 4 it reproduces the digests a Zen 2 wrote,
``tests/golden/encode_digests.json``); ``avx512-core`` is oneDNN without AVX-512 BF16
(bf16 emulated, as on a Skylake); ``mkl-compatible`` runs MKL's reproducible
non-vectorised SGEMM, another summation order (MKL takes its AVX-512 kernels only on
Intel CPUs, so an Intel machine's products differ from an AMD's the same way);
``threads-2`` and ``micro-batch-16`` vary the run instead of the machine.

    python benchmarks/record_stability.py --model flows/assets/demo-small.safetensors \\
        --images ../runs/celeba64 --items 512

The noise fit is made once, natively, and shared (a fit made under another kernel
setting differs in its floats, which changes every record through the store's binding).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "threads-2": {"TORCH_THREADS": "2"},
    "micro-batch-16": {"MICRO_BATCH": "16"},
}
SECRET = bytes(range(32))  # a fixed, public test value


def _items(images: str, n: int) -> np.ndarray:
    from imambig.stores.image_store import open_image_store
    from imambig.stores.location import Location

    store = open_image_store(Location(images))
    idx = store.indices("test")
    idx = idx if len(idx) >= n else store.indices("all")
    return store.read(np.sort(idx[:n]))


def _digests(enc: object) -> tuple[list[str], list[str]]:
    records = [hashlib.sha256(np.packbits(m).tobytes() + np.asarray(v, "<f2").tobytes())
               .hexdigest() for m, v in zip(enc.mask, enc.values, strict=True)]
    keys = [hashlib.sha256(k).hexdigest() for k in enc.keys]
    return records, keys


def worker(a: argparse.Namespace) -> None:
    """One setting, one precision: bottlenecks and records, written to ``a.out``."""
    from imambig.mechanism.decoy_map import DecoyMap
    from imambig.mechanism.noise_model import NoiseModel
    from imambig.model.checkpoint import load_model
    from imambig.stages.encode.images import ambiguate_bottlenecks, bottlenecks
    from imambig.stores.location import Location

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    model, _, _ = load_model(Location(a.model))
    noise = NoiseModel.load(Location(a.noise))
    decoys = DecoyMap.for_owner(noise, SECRET)
    images = _items(a.images, a.items)
    t0 = time.process_time()  # CPU seconds: one thread, other load on the host ignored
    h = bottlenecks(model, images, a.precision, int(os.environ.get("MICRO_BATCH", "8")))
    t1 = time.process_time()
    own = ambiguate_bottlenecks(model, noise, decoys, h)
    t2 = time.process_time()
    native_h = Path(a.native_h)
    same_h = own if not native_h.exists() else ambiguate_bottlenecks(
        model, noise, decoys, torch.from_numpy(np.load(native_h)))
    if not native_h.exists():
        np.save(native_h, h.numpy())
    records, keys = _digests(own)
    same_records, _ = _digests(same_h)
    Path(a.out).write_text(json.dumps({
        "h": [hashlib.sha256(x.tobytes()).hexdigest() for x in h.numpy()],
        "records": records, "keys": keys, "records_same_h": same_records,
        "encoder_s": t1 - t0, "mechanism_s": t2 - t1,
        "capability": torch.backends.cpu.get_cpu_capability(),
    }))


def fit(a: argparse.Namespace, precision: str, out: Path) -> Path:
    from imambig.mechanism.noise_model import fit_noise_model
    from imambig.model.checkpoint import load_model
    from imambig.stores.image_store import open_image_store
    from imambig.stores.loader import to_tensor
    from imambig.stores.location import Location

    torch.set_num_threads(1)
    model, info, _ = load_model(Location(a.model))
    store = open_image_store(Location(a.images))
    idx = store.indices("train")[: a.fit_items]
    batches = (to_tensor(store.read(idx[s : s + 64])) for s in range(0, len(idx), 64))
    k_public = 2 * model.config.k
    noise = fit_noise_model(model, info.model_id, batches, k_public, precision=precision)
    path = out / f"noise_{precision}.npz"
    path.write_bytes(noise.to_bytes())
    return path


def share(a: list[str], b: list[str]) -> str:
    n = sum(x != y for x, y in zip(a, b, strict=True))
    return f"{n}/{len(a)} ({100 * n / len(a):.2f} %)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="flows/assets/demo-small.safetensors")
    p.add_argument("--images", default="../runs/celeba64", help="an image store")
    p.add_argument("--items", type=int, default=512)
    p.add_argument("--fit-items", type=int, default=1024)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--noise", help=argparse.SUPPRESS)
    p.add_argument("--native-h", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    print(f"model {a.model}, {a.items} images of {a.images}, torch {torch.__version__}, "
          f"native CPU capability {torch.backends.cpu.get_cpu_capability()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for precision in a.precisions.split(","):
            noise = fit(a, precision, work)
            native_h = work / f"h_{precision}.npy"
            results = {}
            # native first: the others read its bottlenecks
            names = ["native", *(n for n in a.settings.split(",") if n != "native")]
            for name in names:
                out = work / f"{name}_{precision}.json"
                env = {**os.environ, **SETTINGS[name], "OMP_NUM_THREADS": "1"}
                subprocess.run([sys.executable, __file__, "--worker", "--model", a.model,
                                "--images", a.images, "--items", str(a.items),
                                "--precision", precision, "--noise", str(noise),
                                "--native-h", str(native_h), "--out", str(out)],
                               env=env, check=True)
                results[name] = json.loads(out.read_text())
            base = results["native"]
            print(f"\n{precision}: items that differ from native "
                  f"(CPU s: encoder {base['encoder_s']:.1f}, mechanism {base['mechanism_s']:.1f})")
            print(f"{'setting':16s} {'bottleneck':>18s} {'record (same h)':>18s} "
                  f"{'record':>18s} {'key':>18s}")
            for name, r in results.items():
                if name == "native":
                    continue
                print(f"{name:16s} {share(base['h'], r['h']):>18s} "
                      f"{share(base['records'], r['records_same_h']):>18s} "
                      f"{share(base['records'], r['records']):>18s} "
                      f"{share(base['keys'], r['keys']):>18s}")


if __name__ == "__main__":
    main()
