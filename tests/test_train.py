"""Training: it learns, and a run killed mid-epoch resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imambig.config import PRESETS, IngestConfig, TrainConfig
from imambig.model import checkpoint as ckpt
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stages.ingest import ingest
from imambig.stages.train import WeightAverage, train
from imambig.stores.location import Location


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Location:
    """160 smooth 32x32 colour images (no external data needed)."""
    root = tmp_path_factory.mktemp("synthetic")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for i in range(160):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * xx, b * yy, c * (1 - xx * yy)], axis=-1)
        Image.fromarray((img * 255).astype(np.uint8)).save(src / f"{i:04d}.png")
    out = Location(str(root / "images"))
    ingest(Location(str(src)), out,
           IngestConfig(height=32, width=32, split="random:0.8", workers=1))
    return out


@pytest.fixture(scope="module")
def celeba_tiny_store(celeba_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Location:
    out = Location(str(tmp_path_factory.mktemp("celeba32") / "images"))
    ingest(
        Location(str(celeba_dir)), out,
        IngestConfig(height=32, width=32, crop=178, split="identity:0.8", workers=2,
                     limit=700),
    )
    return out


def _cfg(**kw) -> TrainConfig:
    base = dict(model=PRESETS["tiny"], minutes=None, loss="bce", ema=0.0, batch_size=16, lr=3e-3, val_items=64, num_threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.celeba
@pytest.mark.slow
def test_training_raises_validation_psnr(celeba_tiny_store: Location, tmp_path: Path) -> None:
    result = train(
        celeba_tiny_store, Location(str(tmp_path / "model")),
        _cfg(epochs=5, max_items=500, val_items=100, num_threads=0), progress=False,
    )
    first, last = result.val_psnr[0], result.val_psnr[-1]
    assert len(result.val_psnr) == 5
    assert last > first + 1.0, result.val_psnr
    _, info, _ = ckpt.load_model(Location(str(tmp_path / "model")))
    assert info.model_id == result.model_id
    assert info.metadata["val_psnr"] == result.val_psnr
    # The wall clock covers validation and checkpoints too, so it is never the shorter.
    assert 0 < info.metadata["train_minutes"] <= info.metadata["wall_minutes"]
    assert result.wall_minutes == info.metadata["wall_minutes"]


def test_store_and_model_size_mismatch_is_a_clear_error(
    synthetic_store: Location, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="expects 128x128"):
        train(synthetic_store, Location(str(tmp_path / "m")), _cfg(model=PRESETS["paper"]), progress=False)


def test_killed_run_resumes_to_identical_weights(synthetic_store: Location, tmp_path: Path) -> None:
    settings = dict(epochs=6, checkpoint_every=2)
    clean = train(synthetic_store, Location(str(tmp_path / "clean")), _cfg(**settings),
                  progress=False)

    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "imambig.cli", "train", "--images", str(synthetic_store),
        "--out", str(out), "--preset", "tiny", "--batch-size", "16", "--lr", "3e-3",
        "--val-items", "64", "--threads", "1", "--epochs", "6", "--checkpoint-every", "2",
        "--minutes", "0", "--loss", "bce", "--ema", "0",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / ckpt.PROGRESS_FILE
    deadline = time.monotonic() + 120
    seen: dict = {}
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists():
                seen = json.loads(progress.read_text() or "{}")
                if seen.get("epoch", 0) >= 1 and seen.get("step_in_epoch", 0) > 0:
                    break
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert seen.get("step_in_epoch", 0) > 0, f"never saw a mid-epoch checkpoint: {seen}"
    assert not (out / ckpt.MODEL_FILE).exists()

    resumed = train(synthetic_store, Location(str(out)), _cfg(**settings), progress=False)
    assert resumed.resumed_from_step == seen["global_step"] or resumed.resumed_from_step > 0
    assert resumed.val_psnr == pytest.approx(clean.val_psnr, abs=1e-6)
    assert resumed.model_id == clean.model_id


def test_resume_refuses_different_settings(synthetic_store: Location, tmp_path: Path) -> None:
    out = Location(str(tmp_path / "m"))
    train(synthetic_store, out, _cfg(epochs=1), progress=False)
    with pytest.raises(ValueError, match="different settings"):
        train(synthetic_store, out, _cfg(epochs=1, lr=1e-4), progress=False)


def test_odd_sized_batches_train_on_several_threads(synthetic_store: Location,
                                                     tmp_path: Path) -> None:
    # oneDNN corrupted the heap on these (channels-last strided grouped conv backward);
    # a fresh process, so a crash fails this test instead of the session.
    cmd = [sys.executable, "-m", "imambig.cli", "train", "--images", str(synthetic_store),
           "--out", str(tmp_path / "m"), "--preset", "tiny", "--batch-size", "16",
           "--max-items", "35", "--epochs", "2", "--threads", "2", "--val-items", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_weight_average_gets_batchnorm_statistics_of_its_own_weights() -> None:
    # The average's weights are not the live ones; statistics copied from the live model
    # describe other activations. recalibrate() measures them for the average itself.
    torch.manual_seed(0)
    live = SparseAutoencoder(PRESETS["tiny"]).train()
    average = WeightAverage(live, 0.9)
    with torch.no_grad():
        for p in live.parameters():  # the live model moves on; the average lags
            p.add_(0.05 * torch.randn_like(p))
        live(torch.rand(8, 3, 32, 32))  # running statistics of the live weights
    average.update(live, step=1000)
    x = torch.rand(16, 3, 32, 32)
    first_norm = average.model.down_chain[0].norm
    seen: list[torch.Tensor] = []
    hook = first_norm.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    average.recalibrate([x[:8], x[8:]], "fp32", torch.device("cpu"))
    hook.remove()
    expected = torch.cat(seen).mean(dim=(0, 2, 3))
    torch.testing.assert_close(first_norm.running_mean, expected, rtol=1e-4, atol=1e-5)
    live_mean = live.down_chain[0].norm.running_mean
    assert not torch.allclose(first_norm.running_mean, live_mean, atol=1e-3)
    assert not average.model.training and first_norm.momentum == 0.1


def test_finished_time_budget_run_resumed_takes_no_step(synthetic_store: Location,
                                                        tmp_path: Path) -> None:
    # Re-running a finished run's command republishes its model (under newer code, say)
    # without training further; the average is recalibrated and the result recorded.
    out = Location(str(tmp_path / "m"))
    first = train(synthetic_store, out, _cfg(epochs=50, minutes=0.05, ema=0.9),
                  progress=False)
    _, info, _ = ckpt.load_model(out)
    again = train(synthetic_store, out, _cfg(epochs=50, minutes=0.05, ema=0.9),
                  progress=False)
    _, info2, _ = ckpt.load_model(out)
    assert again.model_id == first.model_id
    assert info2.metadata["global_step"] == info.metadata["global_step"]
    assert info2.metadata["final_val_psnr"] == pytest.approx(info.metadata["final_val_psnr"])
