"""The paper's reference network, parameter by parameter.

With the reference's leaky-ReLU slope (0.01), ``SparseAutoencoder`` computes the
reference's function: same blocks, same order, same top-k. Only names and the order of
the decoder's first 1x1 convolution's output chunks differ. This module maps a state
dict either way, so the reference's weights (its published checkpoint, or weights
copied in for the golden test and the side-by-side benchmark) run in ``imambig`` and
ours run in the reference. It names the reference's parameters; it holds none of its
code.

Reference layout: ``encoder.downBlocks_I[l]`` / ``downBlocks_II[l]`` are the chain and
skip of down level ``l``; ``decoder.upBlocks_I[j]`` / ``upBlocks_II[j]`` run from the
bottleneck outwards, so they mirror our level ``levels - 1 - j``; the decoder's
``convPoint`` emits the chain's input first and then one residual per up step, where
ours emits the residuals level by level and the chain's input last.
"""

from __future__ import annotations

import numpy as np
import torch

from imambig.config import ModelConfig

_DOWN_CHAIN = {"conv1": "conv1", "conv2": "conv2", "norm": "bn", "residual": "resConv"}
_DOWN_SKIP = {**_DOWN_CHAIN, "conv3": "conv3"}
_UP = {"conv1": "conv1", "norm": "gn", "conv2": "conv2", "residual": "resConv"}
_TIED = ("decoder.LinearLayers.weights.", "decoder.weights.")


def module_names(config: ModelConfig) -> dict[str, str]:
    """Our module name -> the reference's, for every module with parameters."""
    levels = len(config.filters)
    names = {"to_maps": "encoder.convPoint", "from_maps": "decoder.convPoint"}
    for level in range(levels):
        step = levels - 1 - level  # the reference's decoder index of this level
        for ours, ref in _DOWN_CHAIN.items():
            names[f"down_chain.{level}.{ours}"] = f"encoder.downBlocks_I.{level}.{ref}"
        for ours, ref in _DOWN_SKIP.items():
            names[f"down_skip.{level}.{ours}"] = f"encoder.downBlocks_II.{level}.{ref}"
        for ours, ref in _UP.items():
            names[f"up_chain.{level}.{ours}"] = f"decoder.upBlocks_I.{step}.{ref}"
            names[f"up_skip.{level}.{ours}"] = f"decoder.upBlocks_II.{step}.{ref}"
    return names


def _reverse_chunks(t: torch.Tensor, chunks: int) -> torch.Tensor:
    """The decoder's 1x1 conv output chunks in the other order (an involution)."""
    return t.unflatten(0, (chunks, -1)).flip(0).flatten(0, 1)


def to_reference(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our ``state_dict`` -> the reference ``Autoencoder``'s (its decoder holds the
    encoder's linear layers twice more, under two names: all three copies)."""
    names = module_names(config)
    chunks = len(config.filters) + 1
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if module == "linear":
            for g in range(config.n_maps):
                out[f"encoder.LinearLayers.LinearLayers.{g}.weight"] = value[g].clone()
                for tied in _TIED:
                    out[f"{tied}{g}.weight"] = value[g].clone()
            continue
        if module == "from_maps":
            value = _reverse_chunks(value, chunks)
        out[f"{names[module]}.{param}"] = value.clone()
    return out


def from_reference(state: dict[str, torch.Tensor], config: ModelConfig
                   ) -> dict[str, torch.Tensor]:
    """The reference ``Autoencoder``'s state dict -> ours. Unknown or missing names raise
    ``KeyError`` naming them (a checkpoint of another shape is not silently half-read)."""
    back = {ref: ours for ours, ref in module_names(config).items()}
    chunks = len(config.filters) + 1
    out: dict[str, torch.Tensor] = {}
    linear: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if module.startswith(_TIED):
            continue  # the tied copies of the encoder's linear layers
        if module.startswith("encoder.LinearLayers.LinearLayers."):
            linear[int(module.rsplit(".", 1)[1])] = value
            continue
        if module not in back:
            raise KeyError(f"the reference has no parameter role for {key!r}")
        if back[module] == "from_maps":
            value = _reverse_chunks(value, chunks)
        out[f"{back[module]}.{param}"] = value.clone()
    missing = sorted(set(range(config.n_maps)) - set(linear))
    if missing:
        raise KeyError(f"reference linear layers missing for maps {missing}")
    out["linear.weight"] = torch.stack([linear[g] for g in range(config.n_maps)])
    return out


def seeded_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights for golden tests, from NumPy's PCG64 (stable across versions, unlike
    torch's initialisers): fan-in scaled normals, norms near identity, and BatchNorm
    running statistics away from (0, 1) so they matter."""
    rng = np.random.default_rng(seed)
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith("num_batches_tracked"):
            out[key] = value.clone()
            continue
        if key.endswith("running_var"):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("running_mean") or key.endswith("bias"):
            a = rng.normal(0.0, 0.1, shape)
        elif value.dim() == 1:  # a norm's scale
            a = rng.uniform(0.8, 1.2, shape)
        else:
            # grouped linear (L, m, n): each map's fan-in is n; convs: in x kh x kw
            fan_in = shape[-1] if key == "linear.weight" else int(np.prod(shape[1:]))
            a = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        out[key] = torch.from_numpy(a.astype(np.float32))
    return out
