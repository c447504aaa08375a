"""Publish a trained ``paper`` model's weights in float16: ``flows/assets/paper-128.safetensors``.

    python -m flows.paper_weights --model runs/paper128

Keeps the weights of a model trained with ``imambig train --preset paper`` (128x128) as
float16 in an ordinary model file, verified by its content hash like any other, with
the training metadata that says what it is (minus where its files lay). Its id is
``PAPER_WEIGHTS_ID``; ``load_model(..., expected_id=PAPER_WEIGHTS_ID)`` refuses any other
file. It is a model of its own (float16 weights hash to another id than the float32
ones): encode and evaluate with it as with any model folder (``docs/paper128.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PAPER_PRESET = "paper"
PAPER_WEIGHTS = Path(__file__).with_name("assets") / "paper-128.safetensors"
PAPER_WEIGHTS_ID = "a96314c1fd1342d4"  # content hash of the file above (its model id)
# Training metadata kept in the published file; locations are left out (machine paths).
KEPT = ("train_config", "precision", "train_minutes", "wall_minutes", "train_items",
        "val_psnr", "final_val_psnr", "global_step", "torch", "created")


def main() -> None:
    from imambig.model.checkpoint import load_model, save_model
    from imambig.stores.location import Location

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="the trained model folder (or file)")
    p.add_argument("--out", type=Path, default=PAPER_WEIGHTS)
    a = p.parse_args()
    model, info, _ = load_model(Location(a.model))
    if model.config.image_height != 128:
        raise SystemExit(f"{a.model} is a {model.config.image_height}-pixel model, not 128")
    metadata = {"made_by": "flows.paper_weights", "trained_from": info.model_id,
                **{k: info.metadata[k] for k in KEPT if k in info.metadata}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.parent / "model.safetensors"
    mid = save_model(Location(str(a.out.parent)), model.half(), metadata)
    tmp.replace(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size:,} bytes, model {mid} from {info.model_id})")


if __name__ == "__main__":
    main()
