"""Training-recipe ablation: one short run per recipe change, validation PSNR and speed.

    python benchmarks/train_ablation.py --images runs/celeba64 --preset small --epochs 8 \
        --out runs/ablation

Every run starts from the same seed and sees the same data order; each row changes one
setting of the baseline (the CLI's defaults). Re-running skips finished runs (each run
resumes from its own checkpoint folder). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from imambig.config import TrainConfig, preset
from imambig.stages.train import train
from imambig.stores.location import Location

VARIANTS: dict[str, dict] = {
    "baseline": {},
    "fp32": {"precision": "fp32"},
    "mse loss": {"loss": "mse"},
    "slope 0.01": {"slope": 0.01},
    "no flips": {"flip": False},
    "weight average 0.999": {"ema": 0.999},
    "batch 32": {"batch_size": 32},
    "lr 4e-3": {"lr": 4e-3},
}


def config(preset_name: str, epochs: int, change: dict) -> TrainConfig:
    change = dict(change)
    model = preset(preset_name)
    if "slope" in change:
        model = dataclasses.replace(model, negative_slope=change.pop("slope"))
    return TrainConfig(model=model, epochs=epochs, checkpoint_every=0, **change)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--only", default=None, help="comma list of variants")
    a = p.parse_args()
    names = a.only.split(",") if a.only else list(VARIANTS)
    rows = []
    for name in names:
        folder = Path(a.out) / name.replace(" ", "-")
        done = folder / "result.json"
        if not done.exists():
            t0 = time.perf_counter()
            res = train(Location(a.images), Location(str(folder)),
                        config(a.preset, a.epochs, VARIANTS[name]), progress=False)
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"val_psnr": res.val_psnr, "images_per_s":
                                        res.images_per_s,
                                        "minutes": (time.perf_counter() - t0) / 60}))
        r = json.loads(done.read_text())
        rows.append((name, r))
        print(f"{name}: {r['val_psnr'][-1]:.2f} dB", flush=True)
    base = rows[0][1]["val_psnr"][-1]
    print(f"\n{a.preset}, {a.epochs} epochs each\n")
    print("| recipe | validation PSNR (dB) | vs first row | train images/s | minutes |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        last = r["val_psnr"][-1]
        print(f"| {name} | {last:.2f} | {last - base:+.2f} | {r['images_per_s']:.1f} | "
              f"{r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
