"""Training of the sparse autoencoder, resumable from its last checkpoint.

Re-running ``train`` with the same output URL continues where the last checkpoint left
off (mid-epoch included): data order, RNG states, optimizer and schedule are restored,
so a killed-and-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from imambig.config import TrainConfig
from imambig.evaluation.metrics import psnr_uint8, to_uint8
from imambig.model import checkpoint as ckpt
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import autocast, resolve
from imambig.stages.release_binding import family
from imambig.stores.image_store import ImageStore, open_image_store
from imambig.stores.loader import epoch_order, iter_batches, to_tensor
from imambig.stores.location import Location

# Settings that may change between a run and its resumption without invalidating it.
_RESUMABLE_CHANGES = {"epochs", "minutes", "device", "num_threads"}


@dataclass
class TrainResult:
    out: Location
    model_id: str
    epochs: int
    val_psnr: list[float] = field(default_factory=list)
    images_per_s: float = 0.0
    resumed_from_step: int = 0
    train_minutes: float = 0.0
    wall_minutes: float = 0.0

    def summary(self) -> str:
        psnr = ", ".join(f"{p:.2f}" for p in self.val_psnr)
        lines = [
            f"model {self.model_id} written to {self.out.join(ckpt.MODEL_FILE)}",
            f"validation PSNR per epoch (dB): {psnr}",
            f"training throughput: {self.images_per_s:.1f} images/s",
            f"time: {self.wall_minutes:.1f} min wall clock, {self.train_minutes:.1f} min of "
            "optimizer steps",
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


def lr_factor(progress: float, warmup: float, min_ratio: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run (steps done over
    all steps, or minutes spent over the budget): linear warm-up over the first
    ``warmup`` of it, then cosine decay to ``min_ratio``."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    t = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class WeightAverage:
    """Exponential moving average of the weights (what is validated and published when
    ``TrainConfig.ema`` > 0). Early steps average with a shorter memory, so the first
    epochs are not dominated by the random initialisation."""

    def __init__(self, model: SparseAutoencoder, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: SparseAutoencoder, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        mine = list(self.model.parameters())
        torch._foreach_lerp_(mine, [p.detach() for p in model.parameters()], 1 - d)
        for b_avg, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_avg.copy_(b)

    @torch.no_grad()
    def recalibrate(self, batches: Iterable[torch.Tensor], precision: str,
                    device: torch.device) -> None:
        """Measure BatchNorm's statistics for the averaged weights on ``batches``. The
        running statistics copied by ``update`` belong to the live weights, not to
        the average's (docs/results.md, *Results on celeba-6k*)."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [n.momentum for n in norms]
        for n in norms:
            n.reset_running_stats()
            n.momentum = None  # a plain average over the calibration batches
        self.model.train()
        with autocast(precision, device):
            for x in batches:
                self.model(x)
        for n, momentum in zip(norms, momenta, strict=True):
            n.momentum = momentum
        self.model.eval()


@torch.no_grad()
def validate(
    model: SparseAutoencoder, store: ImageStore, indices: np.ndarray, device: torch.device,
    batch_size: int = 64, precision: str = "fp32",
) -> float:
    """Mean PSNR (dB, 8-bit) of reconstructions of ``indices``."""
    was_training = model.training
    model.eval()
    scores = []
    for s in range(0, len(indices), batch_size):
        raw = store.read(indices[s : s + batch_size])
        x = to_tensor(raw).to(device)
        with autocast(precision, device):
            y = model.decode(model.encode(x)).float()
        scores.append(psnr_uint8(to_uint8(y).cpu(), torch.from_numpy(raw).permute(0, 3, 1, 2)))
    model.train(was_training)
    return float(np.concatenate(scores).mean()) if scores else float("nan")


def _kernels_for(x: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """oneDNN's CPU backward of the strided grouped convolution in channels-last layout
    corrupts the heap for odd batch sizes above 1 when torch runs more than one thread
    (torch 2.13: "double free or corruption", or a segfault). Such batches (the last one
    of an epoch, typically) run on torch's own kernels instead."""
    if x.device.type == "cpu" and len(x) % 2 and len(x) > 1:
        return torch.backends.mkldnn.flags(enabled=False)
    return contextlib.nullcontext()


def calibration_batches(
    store: ImageStore, train_idx: np.ndarray, cfg: TrainConfig, device: torch.device
) -> Iterator[torch.Tensor]:
    """The training images BatchNorm statistics of the weight average are measured on:
    ``cfg.calibration_items`` of them, the same ones at every epoch (seeded)."""
    n = min(cfg.calibration_items, len(train_idx))
    idx = np.sort(np.random.default_rng(cfg.seed).choice(train_idx, n, replace=False))
    for s in range(0, n, cfg.batch_size):
        yield to_tensor(store.read(idx[s : s + cfg.batch_size])).to(device)


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
    images: Location,
    out: Location,
    cfg: TrainConfig,
    progress: bool = True,
) -> TrainResult:
    """Train on the store's train split; checkpoints and the final model go to ``out``."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = pick_device(cfg.device)
    store = open_image_store(images)
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
    budget_s = cfg.minutes * 60 if cfg.minutes else None
    precision = resolve(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    model = SparseAutoencoder(mc).to(device)
    parent = None
    if cfg.init:  # read with the image store's storage options: one set per run
        init_model, parent, _ = ckpt.load_model(Location(cfg.init, images.storage_options))
        if init_model.config != mc:
            raise ValueError(f"--init {cfg.init} is a {init_model.config} model, not {mc}")
        model.load_state_dict(init_model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None

    epoch, step_in_epoch, global_step, elapsed, history = 0, 0, 0, 0.0, []
    wall_before = 0.0  # wall-clock seconds of earlier invocations (validation included)
    state = ckpt.load_state(out)
    if state is not None:
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        now = cfg.to_dict()
        diff = sorted(k for k in now if now[k] != saved[k] and k not in _RESUMABLE_CHANGES)
        if state.get("precision", precision) != precision:
            diff.append(f"precision (was {state['precision']}, now {precision})")
        if diff:
            raise ValueError(
                f"{out} holds a run with different settings ({', '.join(diff)}); "
                "use another --out or the same settings to resume"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if average is not None:
            average.model.load_state_dict(state["average"])
        _set_rng_state(state["rng"])
        epoch, step_in_epoch, global_step = (
            state["epoch"], state["step_in_epoch"], state["global_step"]
        )
        elapsed = state.get("elapsed", 0.0)
        wall_before = state.get("wall", elapsed)
        history = list(state["val_psnr"])
    resumed_from = global_step
    # A finished run resumed (to publish again with newer code) takes no further step.
    out_of_time = bool(budget_s and elapsed >= budget_s)
    t_start = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - t_start

    def progress_fraction() -> float:
        return elapsed / budget_s if budget_s else global_step / max(1, total_steps)

    def snapshot() -> None:
        ckpt.save_state(
            out,
            {
                "config": cfg.to_dict(),
                "precision": precision,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "average": average.model.state_dict() if average else None,
                "rng": _rng_state(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "elapsed": elapsed,
                "wall": wall(),
                "val_psnr": history,
            },
        )

    published = average.model if average else model
    seen, t_train = 0, 0.0
    model.train()
    bar = tqdm(
        total=round(budget_s) if budget_s else total_steps,
        initial=round(elapsed) if budget_s else global_step,
        disable=None if progress else True, desc="train", unit="s" if budget_s else "step",
        dynamic_ncols=True,
    )
    calibrated = False
    while epoch < cfg.epochs and not out_of_time:
        order = epoch_order(train_idx, store.chunk_items, cfg.seed, epoch)
        t0 = time.perf_counter()
        for _, x in iter_batches(store, order, cfg.batch_size, skip_batches=step_in_epoch):
            t_step = time.perf_counter()
            x = x.to(device, non_blocking=True)
            if cfg.flip:  # drawn from the saved RNG stream, so resumes flip the same items
                flips = torch.rand(len(x)) < 0.5
                x = torch.where(flips.view(-1, 1, 1, 1).to(device), x.flip(-1), x)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(progress_fraction(), cfg.warmup,
                                                 cfg.min_lr_ratio)
            with autocast(precision, device), _kernels_for(x):
                logits, _ = model(x)
                loss = reconstruction_loss(logits, x, cfg.loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            if average is not None:
                average.update(model, global_step)
                calibrated = False
            step_in_epoch += 1
            global_step += 1
            seen += len(x)
            dt = time.perf_counter() - t_step
            elapsed += dt
            bar.update(round(elapsed) - bar.n if budget_s else 1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                snapshot()
            if budget_s and elapsed >= budget_s:
                out_of_time = True
                break
        t_train += time.perf_counter() - t0
        if average is not None:
            average.recalibrate(calibration_batches(store, train_idx, cfg, device),
                                precision, device)
            calibrated = True
        history.append(validate(published, store, val_idx, device, precision=precision))
        bar.write(f"epoch {epoch + 1}: validation PSNR {history[-1]:.2f} dB "
                  f"({elapsed / 60:.1f} min of training)")
        epoch, step_in_epoch = epoch + 1, 0
        snapshot()
    bar.close()

    if average is not None and not calibrated:  # e.g. a run finished under older code
        average.recalibrate(calibration_batches(store, train_idx, cfg, device),
                            precision, device)
    published.eval()
    final_psnr = validate(published, store, val_idx, device, precision=precision)
    metadata = {
        "train_config": cfg.to_dict(),
        "precision": precision,
        "train_minutes": round(elapsed / 60, 2),  # optimizer steps only (--minutes)
        "wall_minutes": round(wall() / 60, 2),  # the whole run: validation, checkpoints
        "images": images.url,
        "parent": parent.model_id if parent else None,
        # Every ancestor, nearest last: a fine-tuned model's codes stay close to its
        # ancestors', so release binding treats them as one family.
        "lineage": [*family(parent.metadata)[0], parent.model_id] if parent else [],
        "train_items": len(train_idx),
        "val_psnr": history,
        "final_val_psnr": final_psnr,  # the published weights, as published
        "global_step": global_step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }
    mid = ckpt.save_model(out, published, metadata)
    return TrainResult(
        out=out, model_id=mid, epochs=epoch, val_psnr=history,
        images_per_s=seen / t_train if t_train else 0.0, resumed_from_step=resumed_from,
        train_minutes=metadata["train_minutes"], wall_minutes=metadata["wall_minutes"],
    )
