"""Metrics, codec baselines at a byte budget, honest rates, and `imambig evaluate` on
real stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imambig.cli import main
from imambig.evaluation.codecs import at_budget, available
from imambig.evaluation.metrics import ms_ssim, ms_ssim_scales, ssim
from imambig.evaluation.rate_distortion import round_mantissa, value_bytes
from imambig.mechanism.grant_entries import entries_key_bytes
from imambig.mechanism.keys import key_bytes


def _face(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth test image: codecs behave on it as on photos, unlike on white noise."""
    rng = np.random.default_rng(seed)
    small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def test_ms_ssim_is_one_on_equal_images_and_falls_with_noise() -> None:
    a = torch.from_numpy(np.stack([_face(128, s) for s in range(3)])).permute(0, 3, 1, 2)
    noise = torch.from_numpy(np.random.default_rng(1).normal(0, 1, a.shape))
    lightly = (a + 4 * noise).clamp(0, 255).round()
    heavily = (a + 40 * noise).clamp(0, 255).round()
    assert np.allclose(ms_ssim(a, a), 1.0)
    assert (ms_ssim(a, heavily) < ms_ssim(a, lightly)).all()
    assert (ms_ssim(a, lightly) < 1.0).all() and (ssim(a, heavily) < ssim(a, lightly)).all()
    assert [ms_ssim_scales(s, s) for s in (32, 64, 128, 176, 512)] == [2, 3, 4, 5, 5]
    with pytest.raises(ValueError, match="one shape"):
        ms_ssim(a, a[:, :, :64])


def test_mantissa_rounding_bounds_the_error_and_compresses_better() -> None:
    v = np.random.default_rng(0).normal(0, 3, 5000).astype(np.float16)
    assert np.array_equal(round_mantissa(v, 10), v)
    r3 = round_mantissa(v, 3).astype(np.float64)
    rel = np.abs(r3 - v) / np.maximum(np.abs(v.astype(np.float64)), 1e-3)
    assert rel.max() <= 2.0**-4 + 1e-6
    assert np.array_equal(round_mantissa(r3.astype(np.float16), 3), r3.astype(np.float16))
    assert value_bytes(round_mantissa(v, 3)) < value_bytes(v)


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_codec_at_budget_fits_and_uses_it(codec: str) -> None:
    if not available(codec):
        pytest.skip(f"Pillow has no {codec}")
    img = _face()
    small, large = at_budget(img, codec, 600), at_budget(img, codec, 3000)
    assert small.fits and small.n_bytes <= 600
    assert large.fits and large.n_bytes <= 3000 and large.quality > small.quality
    assert small.image.shape == img.shape
    tiny = at_budget(img, codec, 10)  # below any header
    assert not tiny.fits and tiny.n_bytes > 10


def test_evaluate_command_writes_table_plots_and_honest_rates(encoded, synthetic_store,
                                                              tiny_model, tmp_path,
                                                              capsys) -> None:
    job, _ = encoded
    out = tmp_path / "eval"
    code = main(["evaluate", "--images", str(synthetic_store), "--model", str(tiny_model),
                 "--public", str(job.public_root), "--keys", str(job.keys_root),
                 "--out", str(out),
                 "--max-items", "24", "--attacks", "random,magnitude", "--rd-items", "8"])
    assert code == 0
    ev = json.loads((out / "evaluation.json").read_text())
    table = {(r["name"], r["notes"]): r for r in ev["table"]}
    names = {r["name"] for r in ev["table"]}
    assert {"authorized k=8", "authorized k=16", "grant k_low=4", "grant k_low=8",
            "grant k_low=12", "JPEG", "WEBP", "AVIF", "public as is", "random guess"} <= names
    # each grant row: the grant's own bytes, and the best of its grantee's attacks beside it
    grant = next(r for r in ev["table"] if r["name"] == "grant k_low=8")
    assert grant["bytes_per_image"] == entries_key_bytes(8, 64, 8)
    assert grant["best_grantee_attack"]["name"] in (
        "re-encode", "learned inversion", "inversion + re-encode")
    assert grant["best_grantee_attack"]["psnr"] > 0
    # tiny preset: L=8 maps, k=16 of k'=32; key size is the fixed-length coder's
    with_key = table[("authorized k=16", "key + true values")]
    alone = table[("authorized k=16", "standalone")]
    values = alone["bytes_per_image"] - key_bytes(8, 64, 16)
    assert with_key["bytes_per_image"] == pytest.approx(key_bytes(8, 32, 16) + values)
    assert alone["bpp"] == pytest.approx(alone["bytes_per_image"] * 8 / (32 * 32))
    assert values > 0
    jpeg = next(r for r in ev["table"] if r["name"] == "JPEG")
    assert "matched per image" in jpeg["notes"]
    assert jpeg["bytes_per_image"] <= alone["bytes_per_image"] or "over budget" in jpeg["notes"]
    assert {"ours, 10-bit mantissa", "ours, 3-bit mantissa", "JPEG"} <= set(ev["curves"])
    ours = sorted(ev["curves"]["ours, 10-bit mantissa"])
    assert len(ours) == 5 and ours[0][0] < ours[-1][0]  # k/8 .. k: more bytes
    for png in ("grid.png", "rd.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(out / png).size[0] > 200
    md = (out / "evaluation.md").read_text()
    assert "| authorized k=16 |" in md and "MS-SSIM" in md
    # Sealed records: the exact photo does not find its record (only the seal holder's
    # view would), and the evaluation says how well it tried.
    assert ev["linkage"]["exact photo"] <= 0.3 and "JPEG q90 copy" in ev["linkage"]
    assert "Exact-photo linkage, exact photo: top-1 " in md
    assert "random guess" in capsys.readouterr().out


def test_contrast_table_says_whether_the_authorized_image_stands_out() -> None:
    from imambig.study.evaluate import contrast_table

    rows = [{"name": "authorized", "psnr": 22.0}, {"name": "public as is", "psnr": 5.0},
            {"name": "learned inversion", "psnr": 13.5}, {"name": "random guess", "psnr": None}]
    table = contrast_table({"rows": rows})
    assert "| learned inversion | 13.50 | 8.50 |" in table
    assert "8.50 dB above the best other column (learned inversion)" in table
    assert table.endswith("the 8 dB contrast holds")
    rows[2]["psnr"] = 14.5
    assert contrast_table({"rows": rows}).endswith("the 8 dB contrast does NOT hold")
    with pytest.raises(ValueError, match="no authorized row"):
        contrast_table({"rows": rows[1:]})
    # an evaluation that left attacks out says which
    note = contrast_table({"rows": rows, "settings": {"attacks": ["random", "learned_inversion"]}})
    assert "attacks not run in this evaluation: " in note and "least_squares" in note
    assert "learned_inversion," not in note.splitlines()[-1]
