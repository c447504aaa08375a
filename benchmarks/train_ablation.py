"""Training-recipe ablation: one short run per recipe change, validation PSNR and speed.

    python benchmarks/train_ablation.py --images runs/celeba64 --preset small \
        --minutes 6 --out runs/ablation

Each row changes one setting of the baseline (the CLI's defaults) and trains from the
same seed on the same data order. With ``--minutes`` every run gets the same budget of
optimizer-step time (the fair comparison when settings change the speed: batch size,
precision); with ``--epochs`` alone, the same number of epochs. Rows that cannot run
here (``bf16`` on a CPU without bf16 kernels) or equal the baseline here (the precision
``auto`` resolves to) are left out with a note. Re-running skips finished
runs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from imambig.config import TrainConfig, preset
from imambig.model.precision import bf16_supported, resolve
from imambig.stages.train import train
from imambig.stores.location import Location

VARIANTS: dict[str, dict] = {
    "baseline": {},
    "bf16": {"precision": "bf16"},
    "fp32": {"precision": "fp32"},
    "bce loss": {"loss": "bce"},
    "slope 0.01": {"slope": 0.01},
    "no flips": {"flip": False},
    "no warm-up": {"warmup": 0.0},
    "no weight average": {"ema": 0.0},
    "batch 32": {"batch_size": 32},
    "batch 80": {"batch_size": 80},
    "lr 4e-3": {"lr": 4e-3},
}


def config(preset_name: str, epochs: int, minutes: float | None, change: dict) -> TrainConfig:
    change = dict(change)
    model = preset(preset_name)
    if "slope" in change:
        model = dataclasses.replace(model, negative_slope=change.pop("slope"))
    return TrainConfig(model=model, epochs=epochs, minutes=minutes, checkpoint_every=0,
                       **change)


def skipped(name: str) -> str | None:
    """Why a variant cannot run, or is the baseline itself, on this machine."""
    want = VARIANTS[name].get("precision")
    if want == "bf16" and not bf16_supported():
        return "this CPU has no bf16 kernels"
    if want is not None and want == resolve("auto"):
        return f"the baseline already runs in {want} here (precision auto)"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="an image store (imambig ingest)")
    p.add_argument("--out", required=True, help="folder of the runs (one per row)")
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=8,
                   help="epochs per run; with --minutes, only an upper bound")
    p.add_argument("--minutes", type=float, default=None,
                   help="optimizer-step minutes per run (equal-time comparison)")
    p.add_argument("--only", default=None, help=f"comma list of: {', '.join(VARIANTS)}")
    a = p.parse_args()
    names = a.only.split(",") if a.only else list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows, notes = [], []
    for name in names:
        if why := skipped(name):
            notes.append(f"{name}: not run ({why})")
            continue
        folder = Path(a.out) / name.replace(" ", "-")
        done = folder / "result.json"
        if not done.exists():
            t0 = time.perf_counter()
            res = train(Location(a.images), Location(str(folder)),
                        config(a.preset, a.epochs, a.minutes, VARIANTS[name]), progress=False)
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"val_psnr": res.val_psnr, "images_per_s":
                                        res.images_per_s, "epochs": res.epochs,
                                        "train_minutes": res.train_minutes,
                                        "minutes": (time.perf_counter() - t0) / 60}))
        r = json.loads(done.read_text())
        rows.append((name, r))
        print(f"{name}: {r['val_psnr'][-1]:.2f} dB", flush=True)
    if not rows:
        return
    base = rows[0][1]["val_psnr"][-1]
    budget = f"{a.minutes:g} minutes of optimizer steps" if a.minutes else f"{a.epochs} epochs"
    print(f"\n{a.preset}, {budget} each\n")
    print("| recipe | validation PSNR (dB) | vs first row | train images/s | epochs | "
          "wall minutes |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        last = r["val_psnr"][-1]
        print(f"| {name} | {last:.2f} | {last - base:+.2f} | {r['images_per_s']:.1f} | "
              f"{r['epochs']} | {r['minutes']:.1f} |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
