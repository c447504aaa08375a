"""Model checkpoints at any location: config + weights + metadata + content hash.

Two kinds of file live in a checkpoint folder:

- ``state.pt``: everything needed to resume training (model, optimizer, scheduler,
  RNG states, position in the epoch). Rewritten atomically during training.
- ``model.pt``: the published model: config, weights, metadata and ``model_id``, the
  SHA-256 of the config and weights. The model id keys everything derived from the
  model (stores, noise fits, ambiguation seeds), so identical weights give identical ids.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import torch

from imambig.config import ModelConfig
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stores.location import Location

MODEL_FILE = "model.pt"
STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"


def model_id(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of config and weights (16 hex digits)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_state(folder: Location, state: dict[str, Any]) -> None:
    folder.join(STATE_FILE).write_bytes(_torch_bytes(state))
    progress = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step") if k in state}
    folder.join(PROGRESS_FILE).write_bytes(json.dumps(progress).encode())


def load_state(folder: Location) -> dict[str, Any] | None:
    data = folder.join(STATE_FILE).read_bytes()
    if data is None:
        return None
    # Our own file: it holds RNG states and optimizer state, not only tensors.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    config: ModelConfig
    metadata: dict[str, Any]


def save_model(
    folder: Location,
    model: SparseAutoencoder,
    metadata: dict[str, Any],
    extras: dict[str, Any] | None = None,
) -> str:
    """Publish ``model.pt`` under ``folder``; returns the model id.

    ``extras`` carries artefacts fitted on the model (e.g. the noise fit) so they
    travel with the weights; they do not change the model id.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    mid = model_id(model.config, state)
    payload = {
        "format": "imambig.model/1",
        "model_id": mid,
        "config": model.config.to_dict(),
        "state_dict": state,
        "metadata": metadata,
        "extras": extras or {},
    }
    folder.join(MODEL_FILE).write_bytes(_torch_bytes(payload))
    return mid


def load_model(
    location: Location, device: str | torch.device = "cpu"
) -> tuple[SparseAutoencoder, ModelInfo, dict[str, Any]]:
    """Load ``model.pt`` from a model folder (or the file itself); verifies the content
    hash. Returns (model in eval mode, info, extras).
    """
    model_file = location if location.url.endswith(".pt") else location.join(MODEL_FILE)
    data = model_file.read_bytes()
    if data is None:
        raise FileNotFoundError(f"no model at {model_file} (train one with `imambig train`)")
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if payload.get("format") != "imambig.model/1":
        raise ValueError(f"{model_file} is not an imambig model file")
    config = ModelConfig.from_dict(payload["config"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    if model_id(config, payload["state_dict"]) != payload["model_id"]:
        raise ValueError(f"{model_file}: weights do not match their model id (corrupted file?)")
    model = SparseAutoencoder(config)
    model.load_state_dict(state)
    model.to(device).eval()
    info = ModelInfo(payload["model_id"], config, payload["metadata"])
    return model, info, payload.get("extras", {})
