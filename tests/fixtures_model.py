"""Fixtures that build small real artefacts: a synthetic image store, a trained tiny
model, owner/keystore secrets in the environment, and an encoded collection."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imambig.config import PRESETS, IngestConfig, TrainConfig
from imambig.stages.ingest import ingest
from imambig.stages.train import train
from imambig.stores.location import Location

N_SYNTHETIC = 300


def make_synthetic_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> None:
    """Smooth colour images with a blob: structured enough for a model to learn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(n):
        a, b, c, cx, cy = rng.uniform(0.1, 1.0, 5)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
        img = np.stack([a * xx, b * yy, c * blob], axis=-1)
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Location:
    root = tmp_path_factory.mktemp("synthetic-images")
    make_synthetic_images(root / "src", N_SYNTHETIC)
    out = Location(str(root / "images"))
    ingest(Location(str(root / "src")), out,
           IngestConfig(height=32, width=32, split="random:0.8", workers=1))
    return out


@pytest.fixture(scope="session")
def tiny_model(synthetic_store: Location, tmp_path_factory: pytest.TempPathFactory) -> Location:
    out = Location(str(tmp_path_factory.mktemp("tiny-model") / "model"))
    train(synthetic_store, out,
          TrainConfig(model=PRESETS["tiny"], epochs=2, minutes=None, batch_size=32,
                      loss="bce", ema=0.0, num_threads=1),
          progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_mechanism(synthetic_store: Location, tiny_model: Location):
    """(model, noise model fitted on the train split at k' = 2k, the test images)."""
    import torch

    from imambig.mechanism.noise_model import fit_noise_model
    from imambig.model.checkpoint import load_model
    from imambig.stores.image_store import open_image_store
    from imambig.stores.loader import to_tensor

    torch.set_num_threads(1)
    model, info, _ = load_model(tiny_model)
    store = open_image_store(synthetic_store)
    train_idx = store.indices("train")
    noise = fit_noise_model(
        model, info.model_id, (to_tensor(store.read(train_idx[s : s + 64]))
                               for s in range(0, len(train_idx), 64)),
        k_public=2 * model.config.k)
    return model, noise, store.read(store.indices("test"))


def _fresh_secrets() -> dict[str, str]:
    return {
        "IMAMBIG_OWNER_SECRET": base64.b64encode(secrets.token_bytes(32)).decode(),
        "IMAMBIG_KEYSTORE_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "IMAMBIG_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@pytest.fixture()
def owner_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fresh owner secret and keystore master key in the environment."""
    env = _fresh_secrets()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="module")
def module_owner_env() -> Iterator[dict[str, str]]:
    """Like ``owner_env``, shared by a module's tests (for module-scoped stores)."""
    env = _fresh_secrets()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(scope="module")
def encoded(synthetic_store, tiny_model, tmp_path_factory, module_owner_env):
    """The synthetic store encoded into local stores: (job, plan)."""
    from imambig.config import EncodeConfig
    from imambig.stages.encode.dask_regions import DaskRegions
    from imambig.stages.encode.driver import run_encode
    from imambig.stages.encode.plan import EncodeJob

    root = tmp_path_factory.mktemp("encoded")
    job = EncodeJob(images=synthetic_store, model=tiny_model,
                    public_root=Location(str(root / "public")),
                    keys_root=Location(str(root / "keys")),
                    config=EncodeConfig(region_items=64))
    report = run_encode(job, DaskRegions(n_workers=1), progress=False)
    return job, report.plan
