"""The attack table of the README: a trained model, held-out faces, an attacker with
faces of its own.

    python benchmarks/privacy_attacks.py --model runs/small-model --images runs/celeba64 \
        [--fit 1000] [--own 500] [--targets 200] [--attacks random,magnitude,...]

The noise model is fitted on ``--fit`` training images; the attacker ambiguates
``--own`` other training images with a secret of its own; the targets are test images.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from imambig.ambiguation import Ambiguated, ambiguate
from imambig.attacks.suite import ATTACKS, attacker_ambiguation, format_table, run_attacks
from imambig.checkpoint import load_model
from imambig.image_store import open_image_store
from imambig.loader import to_tensor
from imambig.noise_model import fit_noise_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--fit", type=int, default=1000)
    p.add_argument("--own", type=int, default=500)
    p.add_argument("--targets", type=int, default=200)
    p.add_argument("--attacks", default="random,largest,smallest,magnitude,position,"
                   "discriminator,reencode", help=f"comma list of {', '.join(ATTACKS)}")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, info, _ = load_model(a.model)
    store = open_image_store(a.images)
    rng = np.random.default_rng(0)
    train = rng.permutation(store.indices("train"))
    fit_idx = np.sort(train[: a.fit])
    own_idx = np.sort(train[a.fit : a.fit + a.own])
    tgt_idx = np.sort(rng.permutation(store.indices("test"))[: a.targets])
    with torch.no_grad():
        fit = to_tensor(store.read(fit_idx))
        noise = fit_noise_model(model, info.model_id,
                                [fit[s : s + 64] for s in range(0, len(fit), 64)],
                                k_public=2 * model.config.k)
        tgt = to_tensor(store.read(tgt_idx))
        ids = store.item_ids()
        parts = [ambiguate(model, model.bottleneck(tgt[s : s + 64]), noise, b"o" * 32,
                           info.model_id, [str(i) for i in ids[tgt_idx[s : s + 64]]])
                 for s in range(0, len(tgt), 64)]
    amb = Ambiguated(*(np.concatenate([getattr(q, f) for q in parts])
                       for f in ("mask", "values", "real")))
    own_imgs = to_tensor(store.read(own_idx))
    own = attacker_ambiguation(model, noise, own_imgs, b"a" * 32)
    results = run_attacks(model, noise, amb, tgt, own_imgs, a.attacks.split(","),
                          attacker_amb=own, log=print)
    print(f"model {info.model_id}, {len(tgt_idx)} targets, attacker {len(own_idx)} own faces")
    print(format_table(results))


if __name__ == "__main__":
    main()
