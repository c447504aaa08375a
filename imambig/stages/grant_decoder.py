"""The grant decoder: the decoder lower-fidelity grants are revealed with.

A lower-fidelity grant holds ``k_low`` of each map's ``k`` real entries. The model's own
decoder was trained on whole top-k codes, so decoding the grant's entries with it
wastes much of what they carry, and anybody can do better with public tools: a decoder
fine-tuned on such partial codes of one's own faces (the grantee attacks' learned
inversion) gains several dB. A grant must show what it reveals, so the owner publishes
that decoder itself: a copy of the model whose decoder is fine-tuned on the owner's
training faces, each code cut to a uniformly random ``k_low`` of its ``k`` entries per
map. The general one (``k_low`` drawn per batch from ``min_fraction * k`` to ``k``)
serves every fidelity; one specialised for a single ``k_low`` (fine-tuned from the
general one) serves grants of exactly that fidelity, and shows what a grantee who
trains for its own fidelity would otherwise get beyond its grant. They are ordinary
model files: ``<model>/grant-decoder/`` and ``<model>/grant-decoder/k_low-<n>/``. The
chosen one's id goes into each lower-fidelity grant, and ``reveal`` loads only the
decoder of that id. Full keys keep the model's own decoder.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

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


def grant_decoder_location(model: Location, k_low: int | None = None) -> Location:
    """Where the general grant decoder of the model folder ``model`` lives, or the one
    specialised for ``k_low``."""
    where = model.join(GRANT_DECODER)
    return where if k_low is None else where.join(f"k_low-{k_low}")


def _published(model: Location, k_low: int | None
               ) -> Iterator[tuple[Location, SparseAutoencoder, ckpt.ModelInfo]]:
    """The grant decoders a ``k_low`` grant may use that exist, the preferred first."""
    if model.url.endswith(".safetensors"):  # a bare model file has no folder beside it
        return
    general = grant_decoder_location(model)
    for where in [general] if k_low is None else [grant_decoder_location(model, k_low),
                                                  general]:
        try:
            decoder, info, _ = ckpt.load_model(where)
        except FileNotFoundError:
            continue
        yield where, decoder, info


def find_grant_decoder(model: Location, model_id: str, k_low: int | None = None
                       ) -> tuple[SparseAutoencoder, str] | None:
    """The grant decoder published beside ``model`` (id ``model_id``) for grants of
    ``k_low`` (the one specialised for it, else the general one) and its id, or None
    where none was trained; one made for another model is refused."""
    for where, decoder, info in _published(model, k_low):
        if info.metadata.get("grant_decoder_of") != model_id:
            raise ValueError(f"{where} is the grant decoder of another model, not {model_id}")
        return decoder, info.model_id
    return None


def load_grant_decoder(model: Location, decoder_id: str, k_low: int) -> SparseAutoencoder:
    """The grant decoder of id ``decoder_id`` beside ``model``, for a ``k_low`` grant.
    Raises FileNotFoundError where neither place holds that id."""
    for _, decoder, info in _published(model, k_low):
        if info.model_id == decoder_id:
            return decoder
    raise FileNotFoundError(f"no grant decoder {decoder_id} in {grant_decoder_location(model)}")


def published_decoder_id(model: Location, model_id: str, k_low: int | None = None) -> str:
    """The id of the grant decoder for ``k_low`` grants beside the model folder ``model``
    (which must hold model ``model_id``), or "" where none was trained (lower-fidelity
    grants are then revealed with the model's own decoder)."""
    _, info, _ = ckpt.load_model(model)
    if info.model_id != model_id:
        raise ValueError(f"{model} holds model {info.model_id}, not the stores' {model_id}")
    found = find_grant_decoder(model, info.model_id, k_low)
    return "" if found is None else found[1]


NO_DECODER_WARNING = ("the grant will be revealed with the model's own decoder, which shows "
                      "less than the grant holds (train one: `imambig train-grant-decoder`)")


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
    """Train and publish a grant decoder of the model at ``model_location`` on the image
    store's training split: the general one, or with ``config.k_low`` the one for that
    fidelity (from the general one, trained first where missing). Returns its summary
    (id, where, validation PSNR per k_low against the model's own decoder)."""
    say = log or (lambda _m: None)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    precision = resolve(config.precision)
    model, info, _ = ckpt.load_model(model_location)
    k = model.config.k
    if config.k_low is not None and not 1 <= config.k_low <= k:
        raise ValueError(f"k_low must be 1..{k} (the model's k), got {config.k_low}")
    store = open_image_store(images)
    train_idx = store.indices("train")[: config.max_items]
    val_idx = store.indices("val")[: config.val_items]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{images} needs 'train' and 'val' items to train a grant decoder")
    start_from = model
    if config.k_low is None:
        k_min, k_max = max(1, math.ceil(config.min_fraction * k)), k
    else:
        k_min = k_max = config.k_low
        found = find_grant_decoder(model_location, info.model_id)
        if found is None:
            say("no general grant decoder yet: training it first")
            train_grant_decoder(model_location, images, replace(config, k_low=None), log)
            found = find_grant_decoder(model_location, info.model_id)
            assert found is not None
        start_from = found[0]
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    decoder = copy.deepcopy(start_from).train()
    opt = torch.optim.Adam(decoder.decoder_parameters(), lr=config.lr)
    batches_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total_steps = config.epochs * batches_per_epoch
    budget = None if config.minutes is None else config.minutes * 60
    spent, step, start = 0.0, 0, time.perf_counter()
    say(f"grant decoder of {info.model_id}: {len(train_idx)} training images, k_low "
        f"{k_min}..{k_max}, {config.epochs} epochs"
        + (f" or {config.minutes:g} min" if budget else ""))
    bar = tqdm(total=total_steps, desc="grant decoder", unit="step", leave=False,
               disable=log is None)
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
            k_low = int(torch.randint(k_min, k_max + 1, (1,), generator=gen))
            view = random_views(grant_codes(model, x), k_low, gen)
            with autocast(precision):
                logits = decoder.decode_logits(view)
            loss = F.mse_loss(torch.sigmoid(logits.float()), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update()
            spent += time.perf_counter() - t0
        else:
            say(f"epoch {epoch + 1}: loss {loss.item():.5f} ({spent / 60:.1f} min)")
            continue
        break
    bar.close()
    decoder.eval()
    x_val = to_tensor(store.read(val_idx))
    fidelities = (k // 4, k // 2, 3 * k // 4, k) if config.k_low is None else (config.k_low,)
    val = {str(kl): {"grant decoder": view_psnr(decoder, model, x_val, kl),
                     "start": view_psnr(start_from, model, x_val, kl),
                     "model decoder": view_psnr(model, model, x_val, kl)}
           for kl in fidelities}
    meta = {"grant_decoder_of": info.model_id, "k_low": config.k_low, "steps": step,
            "train_minutes": spent / 60, "wall_minutes": (time.perf_counter() - start) / 60,
            "k_low_range": [k_min, k_max], "val_psnr": val, "precision": precision}
    where = grant_decoder_location(model_location, config.k_low)
    mid = ckpt.save_model(where, decoder, meta)
    for kl, v in val.items():
        say(f"k_low={kl}: grant decoder {v['grant decoder']:.2f} dB"
            + (f", the general one {v['start']:.2f} dB" if config.k_low is not None else "")
            + f", the model's own decoder {v['model decoder']:.2f} dB")
    return {"model_id": mid, "where": where.url, **meta}
