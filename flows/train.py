"""Flow: image store -> trained model (GPU when the worker has one)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.markdown import markdown_table
from flows.params import check_location
from imambig.config import TrainConfig, preset_name
from imambig.stages.train import train
from imambig.stores.location import Location


@task(name="train model", retries=1)  # a retry resumes from the last checkpoint
def train_model(images: Location, out: Location, config: TrainConfig) -> dict[str, Any]:
    result = train(images, out, config, progress=False)
    return {"model": out.url, "model_id": result.model_id, "val_psnr": result.val_psnr,
            "images_per_s": result.images_per_s}


@flow(name="train", log_prints=True)
def train_flow(images: Location, out: Location,
               config: TrainConfig = TrainConfig()) -> dict[str, Any]:
    check_location(out, "model folder")
    check_location(images, "image store", must_exist=True)
    info = train_model(images, out, config)
    rows = markdown_table(("epoch", "validation PSNR (dB)"),
                          [(i + 1, f"{p:.2f}") for i, p in enumerate(info["val_psnr"])])
    create_markdown_artifact(
        key="training-report",
        markdown=(f"# Training\n\nModel `{info['model_id']}` at `{out}` "
                  f"({preset_name(config.model)}, {config.epochs} epochs, {info['images_per_s']:.1f} images/s)"
                  f"\n\n{rows}"),
    )
    print(f"model {info['model_id']} written to {out}")
    return info
