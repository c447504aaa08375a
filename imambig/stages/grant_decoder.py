"""The grant decoder: the decoder lower-fidelity grants are revealed with.

A lower-fidelity grant holds ``k_low`` of each map's ``k`` real entries. The model's own
decoder was trained on whole top-k codes, so decoding the grant's entries with it
wastes much of what they carry, and anybody can do better with public tools: a decoder
fine-tuned on such partial codes of one's own faces (the grantee attacks' learned
inversion) gains several dB. A grant must show what it reveals, so the owner publishes
that decoder itself: a copy of the model whose decoder is fine-tuned on the owner's
training faces, each code cut to a uniformly random ``k_low`` of its ``k`` entries per
map (``k_low`` drawn per batch from ``min_fraction * k`` to ``k``, so one decoder serves
every fidelity). It is an ordinary model file in ``<model>/grant-decoder/``: its id
goes into each lower-fidelity grant, and ``reveal`` loads it only under that id.
Full keys keep the model's own decoder.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from imambig.config import GrantDecoderConfig
from imambig.evaluation.metrics import psnr_uint8, to_uint8
from imambig.mechanism.grant_entries import random_views
from imambig.mechanism.quantizer import quantize
from imambig.model import checkpoint as ckpt
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.precision import autocast, resolve
from imambig.stores.image_store import open_image_store
from imambig.stores.loader import epoch_order, to_tensor
from imambig.stores.location import Location

GRANT_DECODER = "grant-decoder"  # folder of the grant decoder inside a model folder


def grant_decoder_location(model: Location) -> Location:
    return model.join(GRANT_DECODER)


def find_grant_decoder(model: Location, model_id: str
                       ) -> tuple[SparseAutoencoder, str] | None:
    """The grant decoder published beside ``model`` (id ``model_id``) and its id, or None
    where none was trained; one made for another model is refused."""
    where = grant_decoder_location(model)
    try:
        decoder, info, _ = ckpt.load_model(where)
    except FileNotFoundError:
        return None
    if info.metadata.get("grant_decoder_of") != model_id:
        raise ValueError(f"{where} is the grant decoder of another model, not {model_id}")
    return decoder, info.model_id


@torch.no_grad()
def grant_codes(model: SparseAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """The quantized top-k codes that grants are cut from."""
    return quantize(model.encode(images)).float()


@torch.no_grad()
def view_psnr(decoder: SparseAutoencoder, model: SparseAutoencoder, images: torch.Tensor,
              k_low: int, seed: int = 0) -> float:
    """Mean PSNR of ``decoder`` on random ``k_low`` views of ``images``' codes."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(images), 64):
        x = images[s : s + 64]
        view = random_views(grant_codes(model, x), k_low, gen)
        out.append(psnr_uint8(to_uint8(decoder.decode(view)), to_uint8(x)))
    return float(np.concatenate(out).mean())


def train_grant_decoder(model_location: Location, images: Location,
                        config: GrantDecoderConfig = GrantDecoderConfig(),
                        log: Callable[[str], None] | None = None) -> dict:
    """Train and publish the grant decoder of the model at ``model_location`` on the
    image store's training split; returns its summary (id, validation PSNR per k_low
    against the model's own decoder)."""
    say = log or (lambda _m: None)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    precision = resolve(config.precision)
    model, info, _ = ckpt.load_model(model_location)
    store = open_image_store(images)
    train_idx = store.indices("train")[: config.max_items]
    val_idx = store.indices("val")[: config.val_items]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{images} needs 'train' and 'val' items to train a grant decoder")
    k = model.config.k
    k_min = max(1, math.ceil(config.min_fraction * k))
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    decoder = copy.deepcopy(model).train()
    opt = torch.optim.Adam(decoder.decoder_parameters(), lr=config.lr)
    batches_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total_steps = config.epochs * batches_per_epoch
    budget = None if config.minutes is None else config.minutes * 60
    spent, step, start = 0.0, 0, time.perf_counter()
    say(f"grant decoder of {info.model_id}: {len(train_idx)} training images, k_low "
        f"{k_min}..{k}, {config.epochs} epochs" + (f" or {config.minutes:g} min" if budget
                                                  else ""))
    for epoch in range(config.epochs):
        order = epoch_order(train_idx, store.chunk_items, config.seed, epoch)
        for s in range(0, len(order), config.batch_size):
            t0 = time.perf_counter()
            progress = spent / budget if budget else step / total_steps
            if progress >= 1:
                break
            for group in opt.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * progress))
            x = to_tensor(store.read(np.sort(order[s : s + config.batch_size])))
            k_low = int(torch.randint(k_min, k + 1, (1,), generator=gen))
            view = random_views(grant_codes(model, x), k_low, gen)
            with autocast(precision):
                logits = decoder.decode_logits(view)
            loss = F.mse_loss(torch.sigmoid(logits.float()), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            spent += time.perf_counter() - t0
        else:
            say(f"epoch {epoch + 1}: loss {loss.item():.5f} ({spent / 60:.1f} min)")
            continue
        break
    decoder.eval()
    x_val = to_tensor(store.read(val_idx))
    val = {str(kl): {"grant decoder": view_psnr(decoder, model, x_val, kl),
                     "model decoder": view_psnr(model, model, x_val, kl)}
           for kl in (k // 4, k // 2, 3 * k // 4, k)}
    meta = {"grant_decoder_of": info.model_id, "steps": step, "train_minutes": spent / 60,
            "wall_minutes": (time.perf_counter() - start) / 60, "k_low_range": [k_min, k],
            "val_psnr": val, "precision": precision}
    mid = ckpt.save_model(grant_decoder_location(model_location), decoder, meta)
    for kl, v in val.items():
        say(f"k_low={kl}: grant decoder {v['grant decoder']:.2f} dB, the model's own "
            f"decoder {v['model decoder']:.2f} dB")
    return {"model_id": mid, **meta}
