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
from imambig.stages.encode.release_binding import family
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


@dataclass
class _Run:
    """One run's moving parts and its progress: what a checkpoint saves and a resume
    restores, and the counters behind the reported throughput."""

    cfg: TrainConfig
    device: torch.device
    precision: str
    model: SparseAutoencoder
    opt: torch.optim.Optimizer
    average: WeightAverage | None
    total_steps: int
    budget_s: float | None  # seconds of optimizer steps (--minutes), else epochs decide
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed: float = 0.0  # seconds of optimizer steps, over every invocation
    wall_before: float = 0.0  # wall-clock seconds of earlier invocations (validation included)
    history: list[float] = field(default_factory=list)
    t_start: float = 0.0  # when this invocation's training began (perf_counter)
    seen: int = 0  # images stepped on in this invocation
    t_train: float = 0.0  # seconds of this invocation's epochs
    calibrated: bool = False  # the average's BatchNorm statistics are its own

    @property
    def published(self) -> SparseAutoencoder:
        return self.average.model if self.average else self.model

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    def out_of_time(self) -> bool:
        return bool(self.budget_s and self.elapsed >= self.budget_s)

    def progress_fraction(self) -> float:
        if self.budget_s:
            return self.elapsed / self.budget_s
        return self.global_step / max(1, self.total_steps)

    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "precision": self.precision,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "average": self.average.model.state_dict() if self.average else None,
            "rng": _rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "elapsed": self.elapsed,
            "wall": self.wall(),
            "val_psnr": self.history,
        }


def _open_store(images: Location, cfg: TrainConfig) -> ImageStore:
    """The image store, refused when its images are not the model's size."""
    store = open_image_store(images)
    mc = cfg.model
    if warning := mc.privacy_warning():
        warnings.warn(warning, stacklevel=3)  # the caller of train()
    if (store.height, store.width) != (mc.image_height, mc.image_width):
        raise ValueError(
            f"image store holds {store.height}x{store.width} images but the model expects "
            f"{mc.image_height}x{mc.image_width}; re-ingest with --size {mc.image_height} "
            f"{mc.image_width} or pick another preset"
        )
    return store


def _new_run(images: Location, cfg: TrainConfig, device: torch.device,
             total_steps: int) -> tuple[_Run, ckpt.ModelInfo | None]:
    """A fresh run (seeded weights, or those of ``cfg.init``) and the model it starts
    from, if any."""
    precision = resolve(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = SparseAutoencoder(cfg.model).to(device)
    parent = None
    if cfg.init:  # read with the image store's storage options: one set per run
        init_model, parent, _ = ckpt.load_model(Location(cfg.init, images.storage_options))
        if init_model.config != cfg.model:
            raise ValueError(f"--init {cfg.init} is a {init_model.config} model, not {cfg.model}")
        model.load_state_dict(init_model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    budget_s = cfg.minutes * 60 if cfg.minutes else None
    return _Run(cfg, device, precision, model, opt, average, total_steps, budget_s), parent


def _resume(run: _Run, out: Location) -> None:
    """Continue from the last checkpoint at ``out``, if there is one; a checkpoint of a
    run with other settings (other than those that may change) is refused."""
    state = ckpt.load_state(out)
    if state is None:
        return
    saved = TrainConfig.from_dict(state["config"]).to_dict()
    now = run.cfg.to_dict()
    diff = sorted(k for k in now if now[k] != saved[k] and k not in _RESUMABLE_CHANGES)
    if state.get("precision", run.precision) != run.precision:
        diff.append(f"precision (was {state['precision']}, now {run.precision})")
    if diff:
        raise ValueError(
            f"{out} holds a run with different settings ({', '.join(diff)}); "
            "use another --out or the same settings to resume"
        )
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    if run.average is not None:
        run.average.model.load_state_dict(state["average"])
    _set_rng_state(state["rng"])
    run.epoch, run.step_in_epoch, run.global_step = (
        state["epoch"], state["step_in_epoch"], state["global_step"]
    )
    run.elapsed = state.get("elapsed", 0.0)
    run.wall_before = state.get("wall", run.elapsed)
    run.history = list(state["val_psnr"])


def _step(run: _Run, x: torch.Tensor) -> torch.Tensor:
    """One optimizer step on the batch ``x``; the loss."""
    cfg, device = run.cfg, run.device
    t_step = time.perf_counter()
    x = x.to(device, non_blocking=True)
    if cfg.flip:  # drawn from the saved RNG stream, so resumes flip the same items
        flips = torch.rand(len(x)) < 0.5
        x = torch.where(flips.view(-1, 1, 1, 1).to(device), x.flip(-1), x)
    for group in run.opt.param_groups:
        group["lr"] = cfg.lr * lr_factor(run.progress_fraction(), cfg.warmup, cfg.min_lr_ratio)
    with autocast(run.precision, device), _kernels_for(x):
        logits, _ = run.model(x)
        loss = reconstruction_loss(logits, x, cfg.loss)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
    run.opt.step()
    if run.average is not None:
        run.average.update(run.model, run.global_step)
        run.calibrated = False
    run.step_in_epoch += 1
    run.global_step += 1
    run.seen += len(x)
    run.elapsed += time.perf_counter() - t_step
    return loss


def _train_epoch(run: _Run, store: ImageStore, train_idx: np.ndarray, out: Location,
                 bar: tqdm) -> None:
    """The steps of the current epoch (from where a resumed run stopped in it) until the
    epoch or the time budget ends, with a checkpoint every ``cfg.checkpoint_every``."""
    cfg = run.cfg
    order = epoch_order(train_idx, store.chunk_items, cfg.seed, run.epoch)
    t0 = time.perf_counter()
    for _, x in iter_batches(store, order, cfg.batch_size, skip_batches=run.step_in_epoch):
        loss = _step(run, x)
        bar.update(round(run.elapsed) - bar.n if run.budget_s else 1)
        bar.set_postfix(epoch=run.epoch + 1, loss=f"{loss.item():.4f}")
        if cfg.checkpoint_every and run.global_step % cfg.checkpoint_every == 0:
            ckpt.save_state(out, run.state())
        if run.out_of_time():
            break
    run.t_train += time.perf_counter() - t0


def _end_epoch(run: _Run, store: ImageStore, train_idx: np.ndarray, val_idx: np.ndarray,
               out: Location, bar: tqdm) -> None:
    """Validate the weights that would be published, then checkpoint the next epoch."""
    if run.average is not None:
        run.average.recalibrate(calibration_batches(store, train_idx, run.cfg, run.device),
                                run.precision, run.device)
        run.calibrated = True
    run.history.append(validate(run.published, store, val_idx, run.device,
                                precision=run.precision))
    bar.write(f"epoch {run.epoch + 1}: validation PSNR {run.history[-1]:.2f} dB "
              f"({run.elapsed / 60:.1f} min of training)")
    run.epoch, run.step_in_epoch = run.epoch + 1, 0
    ckpt.save_state(out, run.state())


def _publish(run: _Run, store: ImageStore, train_idx: np.ndarray, val_idx: np.ndarray,
             images: Location, out: Location,
             parent: ckpt.ModelInfo | None) -> tuple[str, dict[str, Any]]:
    """Write the published weights (the average's, when there is one) with what made
    them; the model's id and that metadata."""
    if run.average is not None and not run.calibrated:  # e.g. a run finished under older code
        run.average.recalibrate(calibration_batches(store, train_idx, run.cfg, run.device),
                                run.precision, run.device)
    run.published.eval()
    final_psnr = validate(run.published, store, val_idx, run.device, precision=run.precision)
    metadata = {
        "train_config": run.cfg.to_dict(),
        "precision": run.precision,
        "train_minutes": round(run.elapsed / 60, 2),  # optimizer steps only (--minutes)
        "wall_minutes": round(run.wall() / 60, 2),  # the whole run: validation, checkpoints
        "images": images.url,
        "parent": parent.model_id if parent else None,
        # Every ancestor, nearest last: a fine-tuned model's codes stay close to its
        # ancestors', so release binding treats them as one family.
        "lineage": [*family(parent.metadata)[0], parent.model_id] if parent else [],
        "train_items": len(train_idx),
        "val_psnr": run.history,
        "final_val_psnr": final_psnr,  # the published weights, as published
        "global_step": run.global_step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }
    return ckpt.save_model(out, run.published, metadata), metadata


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
    store = _open_store(images, cfg)
    train_idx, val_idx = _split_indices(store, cfg)
    total_steps = math.ceil(len(train_idx) / cfg.batch_size) * cfg.epochs
    run, parent = _new_run(images, cfg, device, total_steps)
    _resume(run, out)
    resumed_from = run.global_step
    run.t_start = time.perf_counter()
    run.model.train()
    bar = tqdm(
        total=round(run.budget_s) if run.budget_s else total_steps,
        initial=round(run.elapsed) if run.budget_s else run.global_step,
        disable=None if progress else True, desc="train", unit="s" if run.budget_s else "step",
        dynamic_ncols=True,
    )
    # A finished run resumed (to publish again with newer code) takes no further step.
    while run.epoch < cfg.epochs and not run.out_of_time():
        _train_epoch(run, store, train_idx, out, bar)
        _end_epoch(run, store, train_idx, val_idx, out, bar)
    bar.close()
    model_id, metadata = _publish(run, store, train_idx, val_idx, images, out, parent)
    return TrainResult(
        out=out, model_id=model_id, epochs=run.epoch, val_psnr=run.history,
        images_per_s=run.seen / run.t_train if run.t_train else 0.0,
        resumed_from_step=resumed_from, train_minutes=metadata["train_minutes"],
        wall_minutes=metadata["wall_minutes"],
    )
