"""A model's validation curve, two fits to it, and the budget each fit gives for a target.

    python benchmarks/training_curve.py --model runs/paper128 \
        --log runs/paper128.log runs/paper128-b.log --target 30 --test-psnr 24.22 \
        --plot docs/results/training-curve-paper128.png

Reads the per-epoch validation PSNR from the model's metadata and, from the logs that
``imambig train`` printed (in order; optional), the minutes of optimizer steps at each
epoch and the optimizer steps the runs resumed from. A run cut by its ``--minutes``
budget validates a partial epoch, so each point's optimizer step is taken from the
resumption that followed it (or the model's final step); without logs every epoch is
taken as whole and the minutes as spread evenly over the steps.

The fits are made against images seen (optimizer steps x batch), which is what compute
buys whatever else shared the machine, and read in minutes at the run's mean throughput
(images seen / minutes of optimizer steps) and at its best epoch's:

- log: PSNR = a + b ln(images), which never saturates (an optimistic extrapolation);
- saturating: PSNR = P_inf - c exp(-images / tau), which gives no budget when P_inf is
  below the target. (A power law P_inf - c images^-alpha is not identified by such a
  curve: its best fit runs P_inf to infinity and becomes the log fit.)

Within one run the learning rate follows the run's schedule (a cosine decay to its
budget), so the curve is not the final PSNR of runs of other budgets: its end flattens
as the rate decays, which the saturating fit reads as a ceiling.

``--test-psnr`` (the authorized PSNR that ``imambig evaluate`` measured on the test split
with the final weights) moves the target by the gap between validation and test, so the
budget is for the target on the test split. Prints markdown; ``--json`` and ``--plot``
write the numbers and the figure.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import curve_fit

from imambig.evaluation.rate_distortion import figure_png
from imambig.model.checkpoint import load_model
from imambig.stores.location import Location

EPOCH_LINE = re.compile(r"epoch (\d+): validation PSNR ([\d.]+) dB \(([\d.]+) min of training\)")
END_LINE = re.compile(r"^model [0-9a-f]+ written to ")
RESUMED_LINE = re.compile(r"resumed from optimizer step (\d+)")


class Point(NamedTuple):
    """One validation of the run."""

    epoch: int
    psnr: float
    step: int
    minutes: float  # of optimizer steps, as the run recorded them


@dataclass(frozen=True)
class Fit:
    name: str
    formula: str
    params: dict[str, float]
    rmse_db: float
    images_for_target: float | None  # None: the fit never reaches the target


def read_points(metadata: dict, logs: list[str]) -> list[Point]:
    """One point per validated epoch: (epoch, PSNR, optimizer step, minutes)."""
    psnr = [float(p) for p in metadata["val_psnr"]]
    cfg = metadata["train_config"]
    per_epoch = math.ceil(int(metadata["train_items"]) / int(cfg["batch_size"]))
    final_step = int(metadata["global_step"])
    events: list[tuple[str, float, float]] = []
    for text in logs:
        for line in text.splitlines():
            if m := EPOCH_LINE.search(line):
                events.append(("epoch", float(m[2]), float(m[3])))
            elif END_LINE.search(line):
                events.append(("end", 0.0, 0.0))
            elif m := RESUMED_LINE.search(line):
                events.append(("resumed", float(m[1]), 0.0))
    epochs = [(p, t) for kind, p, t in events if kind == "epoch"]
    if not events:
        steps = [min((i + 1) * per_epoch, final_step) for i in range(len(psnr))]
        total = float(metadata["train_minutes"])
        return [Point(i + 1, p, s, total * s / final_step)
                for i, (p, s) in enumerate(zip(psnr, steps, strict=True))]
    if len(epochs) != len(psnr):
        raise SystemExit(f"the logs hold {len(epochs)} epochs, the model {len(psnr)}")
    # The last epoch before each run's summary ended that run; where the run was cut by
    # its budget the epoch was partial and the next run resumed from its step.
    ends: list[int] = []  # index of the epoch that ended each summarised run
    resumes: list[int] = []  # the step each summarised run started from (0: fresh)
    seen = -1
    for kind, value, _ in events:
        if kind == "epoch":
            seen += 1
        elif kind == "end":
            ends.append(seen)
            resumes.append(0)
        elif kind == "resumed" and resumes:
            resumes[-1] = int(value)
    end_step = {e: resumes[j + 1] for j, e in enumerate(ends[:-1]) if resumes[j + 1]}
    points, step = [], 0
    for i, (p, t) in enumerate(epochs):
        step = end_step.get(i, min(step + per_epoch, final_step))
        if i == len(epochs) - 1:
            step = final_step
        points.append(Point(i + 1, p, step, t))
    return points


def fit_log(x: np.ndarray, y: np.ndarray, target: float) -> Fit:
    b, a = np.polyfit(np.log(x), y, 1)
    rmse = float(np.sqrt(np.mean((a + b * np.log(x) - y) ** 2)))
    need = math.exp((target - a) / b) if b > 0 else None
    return Fit("log", "PSNR = a + b ln(images)", {"a": float(a), "b": float(b)}, rmse, need)


def fit_saturating(x: np.ndarray, y: np.ndarray, target: float) -> Fit:
    scale = float(x.max())  # fit on x / max so the parameters stay of order one

    def f(u: np.ndarray, p_inf: float, c: float, tau: float) -> np.ndarray:
        return p_inf - c * np.exp(-u / tau)

    (p_inf, c, tau), _ = curve_fit(f, x / scale, y, p0=(y.max() + 1.0, 5.0, 0.5),
                                   bounds=([y.max(), 0.0, 1e-3], [60.0, 100.0, 100.0]),
                                   maxfev=20000)
    rmse = float(np.sqrt(np.mean((f(x / scale, p_inf, c, tau) - y) ** 2)))
    need = scale * tau * math.log(c / (p_inf - target)) if p_inf > target else None
    return Fit("saturating", "PSNR = P_inf - c exp(-images / (tau images_final))",
               {"P_inf": float(p_inf), "c": float(c), "tau": float(tau)}, rmse, need)


def plot(points: list[Point], fits: list[Fit], batch: int, rate: float, target: float,
         title: str) -> bytes:

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    x = np.array([p.step * batch for p in points], float)
    y = np.array([p.psnr for p in points])
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    ax.plot(x / rate / 60, y, "o", color="k", label="validation PSNR (at mean images/s)")
    ax.plot([p.minutes for p in points], y, "x", color="0.6", label="as recorded (minutes)")
    reach = [f.images_for_target for f in fits if f.images_for_target]
    right = min(max([x.max() * 4, *reach]), x.max() * 200)
    grid = np.geomspace(x.min(), right, 200)
    for f, style in zip(fits, ("-", "--"), strict=True):
        if f.name == "log":
            curve = f.params["a"] + f.params["b"] * np.log(grid)
        else:
            curve = f.params["P_inf"] - f.params["c"] * np.exp(-grid / x.max() / f.params["tau"])
        ax.plot(grid / rate / 60, curve, style, label=f"{f.name} fit")
    ax.axhline(target, color="r", lw=0.8, label=f"target {target:.2f} dB (validation)")
    ax.set_xscale("log")
    ax.set_xlabel("minutes of optimizer steps (1 CPU thread)")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (or file)")
    p.add_argument("--log", nargs="*", default=[], help="imambig train's output, in order")
    p.add_argument("--target", type=float, default=30.0, help="test PSNR to reach (dB)")
    p.add_argument("--test-psnr", type=float, default=None,
                   help="authorized test PSNR of the final weights (moves the target)")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()

    _, info, _ = load_model(Location(a.model))
    meta = info.metadata
    points = read_points(meta, [Path(f).read_text() for f in a.log])
    batch = int(meta["train_config"]["batch_size"])
    final_val = float(meta.get("final_val_psnr", points[-1].psnr))
    gap = final_val - a.test_psnr if a.test_psnr is not None else 0.0
    target = a.target + gap
    images = np.array([pt.step * batch for pt in points], float)
    psnr = np.array([pt.psnr for pt in points])
    total_min = float(meta["train_minutes"])
    mean_rate = images[-1] / (total_min * 60)
    seg = [((b.step - a_.step) * batch / ((b.minutes - a_.minutes) * 60))
           for a_, b in zip([Point(0, 0, 0, 0.0), *points], points, strict=False)
           if b.minutes > a_.minutes and b.step - a_.step >= 100]
    best_rate = max(seg) if seg else mean_rate
    fits = [fit_log(images, psnr, target), fit_saturating(images, psnr, target)]

    print(f"model {info.model_id}: {len(points)} validations, {int(images[-1]):,} images "
          f"seen ({images[-1] / int(meta['train_items']):.2f} epochs of "
          f"{int(meta['train_items']):,}), {total_min:.1f} min of optimizer steps, "
          f"{meta.get('wall_minutes', float('nan')):.1f} min wall clock")
    print(f"images/s: {mean_rate:.2f} mean over the run, {best_rate:.2f} in its fastest "
          f"epoch; final validation {final_val:.2f} dB")
    if a.test_psnr is not None:
        print(f"test authorized {a.test_psnr:.2f} dB: target {a.target:.2f} dB on test is "
              f"{target:.2f} dB on validation")
    print("\n| epoch | optimizer step | images seen | minutes (recorded) | validation PSNR |")
    print("|---|---|---|---|---|")
    for pt in points:
        print(f"| {pt.epoch} | {pt.step:,} | {pt.step * batch:,} | {pt.minutes:.1f} "
              f"| {pt.psnr:.2f} |")
    print("\n| fit | parameters | RMSE (dB) | images for the target | epochs | hours at mean "
          "images/s | hours at best |\n|---|---|---|---|---|---|---|")
    report = []
    for f in fits:
        params = ", ".join(f"{k} {v:.4g}" for k, v in f.params.items())
        if f.images_for_target is None:
            cells = "never (asymptote below the target) | – | – | –"
        else:
            n = f.images_for_target
            cells = (f"{n:.3g} | {n / int(meta['train_items']):.3g} | "
                     f"{n / mean_rate / 3600:.3g} | {n / best_rate / 3600:.3g}")
        print(f"| {f.name}: {f.formula} | {params} | {f.rmse_db:.3f} | {cells} |")
        report.append(asdict(f))
    if a.json:
        a.json.write_text(json.dumps({
            "model_id": info.model_id, "points": [pt._asdict() for pt in points],
            "batch_size": batch, "train_items": int(meta["train_items"]),
            "mean_images_per_s": mean_rate, "best_images_per_s": best_rate,
            "final_val_psnr": final_val, "test_psnr": a.test_psnr, "target_test": a.target,
            "target_validation": target, "fits": report}, indent=1))
    if a.plot:
        title = (f"model {info.model_id[:12]}: validation PSNR and fits "
                 f"({mean_rate:.2f} images/s)")
        a.plot.write_bytes(plot(points, fits, batch, mean_rate, target, title))


if __name__ == "__main__":
    main()
