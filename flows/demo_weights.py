"""Make the demo's starting weights: ``flows/assets/demo-small.safetensors``.

    python -m flows.demo_weights [--images 3000] [--epochs 20]

Draws its own cartoon faces (seed 1; the demo draws with seed 0, so none of the demo's
faces is among them), ingests them at the demo model's 64x64, trains the ``small``
preset (the paper's code sizes: L = 20 maps of m = 512, k = 128, n = 256) with the
demo's recipe and keeps the weights as float16 in an ordinary model file (verified by
its content hash like any other). ``imambig demo`` fine-tunes from it on its own faces,
so the model it publishes with is its own: its id, noise fit and stores are made where
the demo runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from imambig.config import PRESETS, IngestConfig, TrainConfig

DEMO_PRESET = "small"
DEMO_WEIGHTS = Path(__file__).with_name("assets") / f"demo-{DEMO_PRESET}.safetensors"
SEED = 1


def pretrain_config(epochs: int) -> TrainConfig:
    return TrainConfig(model=PRESETS[DEMO_PRESET], epochs=epochs, batch_size=32, loss="mse",
                       ema=0.99, minutes=None, seed=SEED)


def main() -> None:
    # Loaded here: ``imambig demo`` imports this module for its constants only.
    from flows.demo_images import write_demo_images
    from imambig.model.checkpoint import load_model, save_model
    from imambig.stages.ingest import ingest
    from imambig.stages.train import train
    from imambig.stores.location import Location

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=3000, help="faces to draw and train on")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=DEMO_WEIGHTS)
    a = p.parse_args()
    t0 = time.perf_counter()
    config = pretrain_config(a.epochs)
    with tempfile.TemporaryDirectory(prefix="imambig-demo-weights-") as tmp:
        root = Path(tmp)
        write_demo_images(root / "faces", a.images, seed=SEED)
        ingest(Location(str(root / "faces")), Location(str(root / "images")),
               IngestConfig(height=config.model.image_height, width=config.model.image_width,
                            split="random:0.9", seed=SEED))
        result = train(Location(str(root / "images")), Location(str(root / "model")), config)
        model, info, _ = load_model(Location(str(root / "model")))
    metadata = {"made_by": "flows.demo_weights", "images": a.images, "seed": SEED,
                "train_config": dataclasses.asdict(config),
                "val_psnr": result.val_psnr[-1], "trained_from": info.model_id}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    mid = save_model(Location(str(a.out.parent)), model.half(), metadata)
    (a.out.parent / "model.safetensors").replace(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size:,} bytes, model {mid}, validation PSNR "
          f"{result.val_psnr[-1]:.2f} dB) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
