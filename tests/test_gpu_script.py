"""The GPU job (``infra/gpu/run.sh``) rehearsed end to end on the CPU with a tiny budget:
every step it takes on a lent GPU runs here, so that one run cannot fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from flows.demo_images import write_demo_images

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    write_demo_images(faces, 60)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DATA": str(faces), "MINUTES": "0.05",
           "PRESET": "tiny", "SIZE": "32", "CROP": "120", "SPLIT": "random:0.8",
           "DEVICE": "cpu", "PRECISION": "fp32", "EVAL_ITEMS": "4", "MEASURE_SECONDS": "0.2",
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "infra/gpu/run.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["test_items"] == 4 and numbers["precision"] == "fp32"
    assert numbers["authorized_psnr"] > 5 and numbers["encode_images_per_s"] > 0
    whole = numbers["whole_encode"]  # forward + mechanism + seal + keys on the device
    assert whole["images_per_s"] > 0
    assert set(whole["ms_per_image"]) == {"forward", "mechanism", "seal", "keys"}
    assert all(v > 0 for v in whole["ms_per_image"].values())
    assert numbers["train_images_per_s"] > 0 and numbers["preset_image"] == [32, 32]
    with safe_open(str(out / "model-fp16.safetensors"), "pt") as f:
        assert f.metadata()["model_id"] == numbers["model_id"]
        names = list(f.keys())  # safe_open is not iterable
        assert names and {str(f.get_tensor(k).dtype) for k in names} == {"torch.float16"}
    assert not (out / "images-staging").exists()  # the faces do not leave with the numbers
    assert "done:" in proc.stdout


def test_gpu_script_says_what_it_needs() -> None:
    proc = subprocess.run(["bash", str(ROOT / "infra/gpu/run.sh")],
                          env={k: v for k, v in os.environ.items() if k != "OUT"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "set OUT" in proc.stderr


@pytest.mark.parametrize("flag", ["--help"])
def test_gpu_report_has_help(flag: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_report.py"), flag],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "numbers.json" in proc.stdout
