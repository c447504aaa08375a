"""The network: shapes, exact sparsity, tied weights, batched grouped layer, size."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from imambig.config import PRESETS, ModelConfig, preset
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.layers.blocks import DownChain, DownSkip, pointwise
from imambig.model.layers.grouped_linear import GroupedLinear, LoopGroupedLinear
from imambig.model.layers.topk import topk_sparsify
from imambig.model.reference import seeded_state


@pytest.fixture(scope="module")
def tiny() -> SparseAutoencoder:
    torch.manual_seed(0)
    return SparseAutoencoder(PRESETS["tiny"]).eval()


def test_topk_keeps_k_largest_magnitudes_with_signs() -> None:
    h = torch.tensor([[0.1, -5.0, 3.0, -0.2, 4.0, 0.0]])
    z = topk_sparsify(h, 3)
    assert torch.equal(z, torch.tensor([[0.0, -5.0, 3.0, 0.0, 4.0, 0.0]]))


def test_topk_gradient_flows_through_kept_entries_only() -> None:
    h = torch.randn(4, 3, 32, requires_grad=True)
    z = topk_sparsify(h, 5)
    z.sum().backward()
    assert torch.equal(h.grad, (z != 0).float())


def test_grouped_linear_matches_per_group_loop() -> None:
    torch.manual_seed(1)
    batched = GroupedLinear(6, 16, 40)
    loop = LoopGroupedLinear(6, 16, 40)
    loop.load_state_dict(batched.state_dict())
    x, z = torch.randn(5, 6, 16), torch.randn(5, 6, 40)
    torch.testing.assert_close(batched(x), loop(x))
    torch.testing.assert_close(batched.transpose(z), loop.transpose(z))
    # transpose is the adjoint: <W x, z> == <x, W^T z> per group
    torch.testing.assert_close(
        (batched(x) * z).sum(-1), (x * batched.transpose(z)).sum(-1), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_encode_shapes_and_exact_sparsity(name: str) -> None:
    c = PRESETS[name]
    torch.manual_seed(0)
    model = SparseAutoencoder(c).eval()
    x = torch.rand(2, 3, c.image_height, c.image_width)
    with torch.no_grad():
        h = model.bottleneck(x)
        dense = model.dense_code(x)
        z = model.encode(x)
        y = model.decode(z)
    assert h.shape == (2, c.n_maps, c.bottleneck_size)
    assert dense.shape == z.shape == (2, c.n_maps, c.code_length)
    assert ((z != 0).sum(-1) == c.k).all()
    # the sparse code is the dense code restricted to its support
    assert torch.equal(z[z != 0], dense[z != 0])
    assert y.shape == x.shape
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_encode_k_override(tiny: SparseAutoencoder) -> None:
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert ((tiny.encode(x, k=5) != 0).sum(-1) == 5).all()


def test_decoder_uses_the_encoder_weights_transposed(tiny: SparseAutoencoder) -> None:
    names = [
        n for n, p in tiny.named_parameters() if p.dim() == 3
    ]
    assert names == ["linear.weight"], "exactly one grouped weight tensor, shared"
    c = tiny.config
    assert tiny.linear.weight.shape == (c.n_maps, c.code_length, c.bottleneck_size)
    # a gradient from the decoder alone reaches the shared weight
    z = torch.zeros(1, c.n_maps, c.code_length)
    z[0, :, 0] = 1.0
    tiny.zero_grad()
    tiny.decode_logits(z).sum().backward()
    assert tiny.linear.weight.grad is not None and tiny.linear.weight.grad.abs().sum() > 0
    tiny.zero_grad()


def test_non_square_round_trip() -> None:
    c = dataclasses.replace(PRESETS["tiny"], image_height=48, image_width=80)
    model = SparseAutoencoder(c).eval()
    assert c.bottleneck_hw == (6, 10)
    x = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        y = model.decode(model.encode(x))
    assert y.shape == (2, 3, 48, 80)


def test_image_size_must_divide_by_the_scales() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(image_height=100, image_width=128)


def test_paper_preset_size_matches_the_paper() -> None:
    model = SparseAutoencoder(PRESETS["paper"])
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 3.28e6) / 3.28e6 < 0.01, n
    c = PRESETS["paper"]
    assert (c.n_maps, c.code_length, c.k, c.bottleneck_hw) == (20, 512, 128, (16, 16))


def test_shapes_with_a_bottleneck_under_k_are_flagged() -> None:
    # n < k lets a least-squares fit tell real entries from fakes (docs/privacy.md).
    assert preset("small-n64").privacy_warning() is not None
    assert "n=64 < k=128" in preset("small-n64").privacy_warning()
    for name in ("paper", "small", "tiny"):
        assert preset(name).privacy_warning() is None, name


def test_one_thread_training_steps_run_to_the_end() -> None:
    # oneDNN's strided 1x1 weight gradient corrupted the heap on AVX2 CPUs with one
    # thread (the tiny preset's first skip: 3 channels, stride 8); blocks.pointwise
    # sub-samples instead. A crash kills the process, so the steps run in their own.
    script = (
        "import torch\n"
        "from imambig.config import PRESETS\n"
        "from imambig.model.autoencoder import SparseAutoencoder\n"
        "torch.set_num_threads(1); torch.manual_seed(0)\n"
        "m = SparseAutoencoder(PRESETS['tiny']).train()\n"
        "opt = torch.optim.Adam(m.parameters())\n"
        "x = torch.rand(32, 3, 32, 32)\n"
        "for _ in range(20):\n"
        "    logits, _ = m(x)\n"
        "    loss = torch.nn.functional.mse_loss(torch.sigmoid(logits), x)\n"
        "    opt.zero_grad(); loss.backward(); opt.step()\n"
        "print('done', float(loss))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("done")


def test_strided_pointwise_is_the_strided_convolution() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1, stride=8)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(pointwise(conv, x), conv(x))


@pytest.mark.parametrize("block", [DownChain(8, 10, 2, 5, 0.01), DownSkip(8, 10, 4, 0.01)])
def test_folded_inference_computes_the_plain_block(block: torch.nn.Module) -> None:
    # Inference folds BatchNorm (and the skip's 5x5 + strided 1x1) into one convolution;
    # with non-trivial running statistics it must still be the plain block's function.
    block.load_state_dict(seeded_state(block, 3))
    block.eval()
    x = torch.randn(4, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block._plain(x), rtol=1e-5, atol=1e-5)
