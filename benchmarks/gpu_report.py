"""Numbers of a trained model on the machine it runs on: authorized quality on the test
split, encode and training images/s, the whole encode (forward pass, mechanism, seal,
key coding) on the device with its per-stage breakdown, and the model's weights in fp16.

    python benchmarks/gpu_report.py --model gpu-out/model --images gpu-out/images \
        --out gpu-out

Writes ``numbers.json`` and ``model-fp16.safetensors`` (the published model's tensors
cast to float16, with its metadata) to ``--out`` and prints the numbers. The authorized
image is the quantized top-k code decoded, exactly what a key holder reconstructs
(sealing and ambiguation do not change it). The last step of ``infra/gpu/run.sh``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from imambig.evaluation.metrics import psnr_uint8, ssim, to_uint8
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import fit_noise_model
from imambig.mechanism.quantizer import quantize
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import load_model
from imambig.model.precision import autocast, resolve
from imambig.stages.encode.images import StageTimes, encode_images
from imambig.stages.train import pick_device, reconstruction_loss
from imambig.stores.image_store import ImageStore, open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, n_images: int, device: torch.device, seconds: float = 5.0) -> float:
    """Images/s of ``fn`` (one call handles ``n_images``), after one warm-up call."""
    fn()
    _sync(device)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    _sync(device)
    return calls * n_images / (time.perf_counter() - t0)


def _whole_encode(model_location: Location, store: ImageStore, model: SparseAutoencoder,
                  xb: torch.Tensor, precision: str, seconds: float) -> dict[str, object]:
    """``encode_images`` on the model's device (the ``--device cuda`` path of a worker):
    images/s and milliseconds per image by stage. The noise fit (the owner's, done once
    per model) is made on the CPU from training images, with a fixed benchmark secret."""
    cpu_model = load_model(model_location)[0].eval()
    fit_items = store.indices("train")[:256]
    noise = fit_noise_model(cpu_model, "bench", [to_tensor(store.read(fit_items))],
                            k_public=2 * cpu_model.config.k)
    decoys = DecoyMap.for_owner(noise, b"benchmark owner secret, not real")
    images = (xb.cpu().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    times = StageTimes()
    with torch.no_grad():
        encode_images(model, noise, decoys, images, precision, len(images))  # warm-up
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or calls == 0:
            encode_images(model, noise, decoys, images, precision, len(images), times)
            calls += 1
        total = time.perf_counter() - t0
    n = calls * len(images)
    return {"images_per_s": n / total,
            "ms_per_image": {k: 1e3 * v / n for k, v in times.to_dict().items()
                             if k in ("forward", "mechanism", "seal", "keys")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder of imambig train")
    p.add_argument("--images", required=True, help="image store with a test split")
    p.add_argument("--out", required=True, help="folder for numbers.json and the fp16 weights")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", help="auto | bf16 | fp32")
    p.add_argument("--eval-items", type=int, default=200, help="test images evaluated")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    a = p.parse_args()

    device = pick_device(a.device)
    precision = resolve(a.precision, device)
    model, info, _ = load_model(Location(a.model))
    model = model.to(device).eval()
    store = open_image_store(Location(a.images))
    test = store.indices("test")[: a.eval_items]
    if len(test) == 0:
        raise SystemExit(f"{a.images} has no test split")
    x = to_tensor(store.read(test))

    psnrs, ssims = [], []
    with torch.no_grad():
        for s in range(0, len(x), a.batch):
            batch = x[s : s + a.batch].to(device)
            with autocast(precision, device):
                code = model.encode(batch).float()
            # the public quantizer, then the decoder: what a key holder sees
            code = quantize(code.cpu()).float().to(device)
            with autocast(precision, device):
                out = model.decode(code).float()
            ref, got = to_uint8(batch.cpu()), to_uint8(out.cpu())
            psnrs.append(psnr_uint8(got, ref))
            ssims.append(ssim(got, ref))

    xb = x[: a.batch].to(device)
    with torch.no_grad():
        def encode() -> None:
            with autocast(precision, device):
                model.encode(xb)

        encode_rate = _rate(encode, len(xb), device, a.seconds)
    pipeline = _whole_encode(Location(a.model), store, model, xb, precision, a.seconds)
    trainee = model.train()
    opt = torch.optim.Adam(trainee.parameters(), lr=1e-4)

    def step() -> None:
        with autocast(precision, device):
            logits, _ = trainee(xb)
        loss = reconstruction_loss(logits, xb, "mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_rate = _rate(step, len(xb), device, a.seconds)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    published, _, _ = load_model(Location(a.model))  # the step above changed the copy
    save_file({k: v.half().contiguous() for k, v in published.state_dict().items()},
              str(out / "model-fp16.safetensors"),
              metadata={"model_id": info.model_id, "dtype": "float16"})
    numbers = {
        "model_id": info.model_id,
        "preset_image": [model.config.image_height, model.config.image_width],
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine()),
        "precision": precision,
        "test_items": len(test),
        "authorized_psnr": float(np.mean(np.concatenate(psnrs))),
        "authorized_ssim": float(np.mean(np.concatenate(ssims))),
        "encode_images_per_s": encode_rate,
        "whole_encode": pipeline,
        "train_images_per_s": train_rate,
        "batch": len(xb),
        "training": {k: info.metadata.get(k) for k in (
            "train_minutes", "global_step", "train_items", "precision", "val_psnr")},
        "torch": torch.__version__,
    }
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1, default=str) + "\n")
    print(json.dumps(numbers, indent=1, default=str))


if __name__ == "__main__":
    main()
