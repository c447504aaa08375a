"""Training of the sparse autoencoder, resumable from its last checkpoint.

Re-running ``train`` with the same output URL continues where the last checkpoint left
off (mid-epoch included): data order, RNG states, optimizer and schedule are restored,
so a killed-and-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from imambig import checkpoint as ckpt
from imambig.config import TrainConfig
from imambig.image_store import ImageStore, open_image_store
from imambig.loader import epoch_order, iter_batches, to_tensor
from imambig.metrics import psnr_uint8, to_uint8
from imambig.models.autoencoder import SparseAutoencoder
from imambig.storage import join

# Settings that may change between a run and its resumption without invalidating it.
_RESUMABLE_CHANGES = {"epochs", "device", "num_threads"}


@dataclass
class TrainResult:
    out: str
    model_id: str
    epochs: int
    val_psnr: list[float] = field(default_factory=list)
    images_per_s: float = 0.0
    resumed_from_step: int = 0

    def summary(self) -> str:
        psnr = ", ".join(f"{p:.2f}" for p in self.val_psnr)
        lines = [
            f"model {self.model_id} written to {join(self.out, ckpt.MODEL_FILE)}",
            f"validation PSNR per epoch (dB): {psnr}",
            f"training throughput: {self.images_per_s:.1f} images/s",
        ]
        if self.resumed_from_step:
            lines.append(f"resumed from optimizer step {self.resumed_from_step}")
        return "\n".join(lines)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), x)
    return F.mse_loss(torch.sigmoid(logits.float()), x)


def lr_factor(step: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over the first 2 % of steps, then cosine decay to ``min_ratio``."""
    warmup = max(1, int(0.02 * total))
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def validate(
    model: SparseAutoencoder, store: ImageStore, indices: np.ndarray, device: torch.device,
    batch_size: int = 64,
) -> float:
    """Mean PSNR (dB, 8-bit) of reconstructions of ``indices``."""
    model.eval()
    scores = []
    for s in range(0, len(indices), batch_size):
        raw = store.read(indices[s : s + batch_size])
        x = to_tensor(raw).to(device)
        y = model.decode(model.encode(x))
        scores.append(psnr_uint8(to_uint8(y).cpu(), torch.from_numpy(raw).permute(0, 3, 1, 2)))
    model.train()
    return float(np.concatenate(scores).mean()) if scores else float("nan")


def _split_indices(store: ImageStore, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    train_idx = store.indices("train")
    val_idx = store.indices("val")
    if len(val_idx) == 0:
        val_idx = store.indices("test")
    if len(train_idx) == 0:
        raise ValueError("the image store has no 'train' items")
    if cfg.max_items:
        train_idx = train_idx[: cfg.max_items]
    if len(val_idx) == 0:  # no held-out items at all: validate on a slice of train
        val_idx = train_idx[-min(len(train_idx), cfg.val_items) :]
    return train_idx, val_idx[: cfg.val_items]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(
    images_url: str,
    out_url: str,
    cfg: TrainConfig,
    storage_options: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on the store's train split; checkpoints and the final model go to ``out_url``."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = pick_device(cfg.device)
    store = open_image_store(images_url, storage_options)
    mc = cfg.model
    if warning := mc.privacy_warning():
        warnings.warn(warning, stacklevel=2)
    if (store.height, store.width) != (mc.image_height, mc.image_width):
        raise ValueError(
            f"image store holds {store.height}x{store.width} images but the model expects "
            f"{mc.image_height}x{mc.image_width}; re-ingest with --size {mc.image_height} "
            f"{mc.image_width} or pick another preset"
        )
    train_idx, val_idx = _split_indices(store, cfg)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)
    model = SparseAutoencoder(mc).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, cfg.min_lr_ratio)
    )

    epoch, step_in_epoch, global_step, history = 0, 0, 0, []
    state = ckpt.load_state(out_url, storage_options)
    if state is not None:
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        now = cfg.to_dict()
        diff = sorted(k for k in now if now[k] != saved[k] and k not in _RESUMABLE_CHANGES)
        if diff:
            raise ValueError(
                f"{out_url} holds a run with different settings ({', '.join(diff)}); "
                "use another --out or the same settings to resume"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        epoch, step_in_epoch, global_step = (
            state["epoch"], state["step_in_epoch"], state["global_step"]
        )
        history = list(state["val_psnr"])
    resumed_from = global_step

    def snapshot() -> None:
        ckpt.save_state(
            out_url,
            {
                "config": cfg.to_dict(),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "val_psnr": history,
            },
            storage_options,
        )

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    )
    seen, t_train = 0, 0.0
    model.train()
    bar = tqdm(
        total=total_steps, initial=global_step, disable=None if progress else True,
        desc="train", unit="step", dynamic_ncols=True,
    )
    while epoch < cfg.epochs:
        order = epoch_order(train_idx, store.chunk_items, cfg.seed, epoch)
        t0 = time.perf_counter()
        for _, x in iter_batches(store, order, cfg.batch_size, skip_batches=step_in_epoch):
            x = x.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits, _ = model(x)
            loss = reconstruction_loss(logits, x, cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step_in_epoch += 1
            global_step += 1
            seen += len(x)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                snapshot()
        t_train += time.perf_counter() - t0
        history.append(validate(model, store, val_idx, device))
        bar.write(f"epoch {epoch + 1}/{cfg.epochs}: validation PSNR {history[-1]:.2f} dB")
        epoch, step_in_epoch = epoch + 1, 0
        snapshot()
    bar.close()

    model.eval()
    metadata = {
        "train_config": cfg.to_dict(),
        "images": images_url,
        "train_items": len(train_idx),
        "val_psnr": history,
        "global_step": global_step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }
    mid = ckpt.save_model(out_url, model, metadata, storage_options)
    return TrainResult(
        out=out_url, model_id=mid, epochs=cfg.epochs, val_psnr=history,
        images_per_s=seen / t_train if t_train else 0.0, resumed_from_step=resumed_from,
    )
