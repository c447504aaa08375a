"""The paper's reference code, imported from a checkout given by path (never copied
into this repository), with imambig's weights copied in by role."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import torch

from imambig.config import ModelConfig
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.reference import to_reference


def import_reference(path: str | Path) -> ModuleType:
    """The checkout's ``models`` module (it imports its own ``tools``)."""
    root = Path(path).resolve()
    if not (root / "models.py").is_file() or not (root / "tools.py").is_file():
        raise SystemExit(f"{root}: not a checkout of the reference code (models.py, tools.py)")
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("models")
    finally:
        sys.path.remove(str(root))


def reference_twin(models: ModuleType, ours: SparseAutoencoder) -> torch.nn.Module:
    """The reference ``Autoencoder`` of ``ours``'s shape, holding ``ours``'s weights."""
    c: ModelConfig = ours.config
    ref = models.Autoencoder(
        (3, c.image_height, c.image_width), len(c.filters), list(c.filters), list(c.scales),
        c.n_maps, c.code_length, c.k,
    )
    ref.load_state_dict(to_reference(ours.state_dict(), c), strict=True)
    return ref.eval()
