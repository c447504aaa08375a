"""Flow: image store -> trained model (GPU when the worker has one)."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.params import check_exists, check_storage_options
from imambig.config import TrainConfig, preset
from imambig.stages.train import train


@task(name="train model", retries=1)  # a retry resumes from the last checkpoint
def train_model(images: str, out: str, cfg: TrainConfig,
                storage_options: dict[str, Any]) -> dict[str, Any]:
    result = train(images, out, cfg, storage_options=storage_options, progress=False)
    return {"model": out, "model_id": result.model_id, "val_psnr": result.val_psnr,
            "images_per_s": result.images_per_s}


@flow(name="train", log_prints=True)
def train_flow(
    images: str,
    out: str,
    model_preset: str = "tiny",
    epochs: int = 10,
    batch_size: int = 80,
    k: int | None = None,
    lr: float = 2e-3,
    max_items: int | None = None,
    device: str = "auto",
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    opts = check_storage_options(storage_options)
    check_exists(images, "image store", opts)
    model = preset(model_preset)
    if k is not None:
        model = dataclasses.replace(model, k=k)
    cfg = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                      max_items=max_items, device=device)
    out_info = train_model(images, out, cfg, opts)
    rows = "\n".join(f"| {i + 1} | {p:.2f} |" for i, p in enumerate(out_info["val_psnr"]))
    create_markdown_artifact(
        key="training-report",
        markdown=(f"# Training\n\nModel `{out_info['model_id']}` at `{out}` "
                  f"({model_preset}, {epochs} epochs, {out_info['images_per_s']:.1f} images/s)"
                  f"\n\n| epoch | validation PSNR (dB) |\n|---|---|\n{rows}\n"),
    )
    print(f"model {out_info['model_id']} written to {out}")
    return out_info
