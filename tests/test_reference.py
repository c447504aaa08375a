"""`paper` is the reference network's function (SYSTEM.md, "Network").

``tests/golden/reference_paper.npz`` holds the reference code's own outputs (its
``Encoder`` and ``Decoder``) for seeded weights and input, made once by
``benchmarks/make_reference_golden.py`` from a checkout of that code. Here the same
weights, mapped by role, must give the same support, values and decoder output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from imambig.config import preset
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.reference import from_reference, seeded_state, to_reference

GOLDEN = Path(__file__).parent / "golden" / "reference_paper.npz"


def _run(slope: float, golden: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = dataclasses.replace(preset("paper"), negative_slope=slope)
    model = SparseAutoencoder(c).eval()
    model.load_state_dict(seeded_state(model, int(golden["seed"])))
    rng = np.random.default_rng(int(golden["seed"]) + 1)
    x = torch.from_numpy(rng.random((1, 3, c.image_height, c.image_width)).astype(np.float32))
    with torch.inference_mode():
        z = model.encode(x)[0]
        logits = model.decode_logits(z[None])[0]
    support = z.abs().topk(c.k, dim=-1).indices.sort(dim=-1).values
    return support.numpy(), z.gather(-1, support).numpy(), logits.numpy()


@pytest.fixture(scope="module")
def golden() -> dict:
    with np.load(GOLDEN) as f:
        return {name: f[name] for name in f.files}


def test_paper_computes_the_reference_function(golden: dict) -> None:
    assert preset("paper").negative_slope == float(golden["slope"])
    support, values, logits = _run(preset("paper").negative_slope, golden)
    np.testing.assert_array_equal(support, golden["support"])
    np.testing.assert_allclose(values, golden["values"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, golden["logits"], rtol=1e-4, atol=1e-4)


def test_another_slope_is_another_function(golden: dict) -> None:
    # What the golden test guards against: the presets' former slope misses the
    # reference by far more than the tolerance above.
    support, _, logits = _run(0.2, golden)
    assert (support != golden["support"]).mean() > 0.05
    assert np.abs(logits - golden["logits"]).max() > 0.1


def test_role_mapping_round_trips() -> None:
    c = preset("paper")
    model = SparseAutoencoder(c)
    state = seeded_state(model, 1)
    ref = to_reference(state, c)
    # Three linear copies (the reference's decoder holds the tied weights twice more).
    assert sum(".weights." in k or ".LinearLayers." in k for k in ref) == 3 * c.n_maps
    back = from_reference(ref, c)
    assert back.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(back[key], state[key], rtol=0, atol=0)
    ref["encoder.mystery.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="mystery"):
        from_reference(ref, c)
