"""What a lower-fidelity grant gives away about the entries it does not reveal, and what
it costs in quality, for the two ways of choosing its k_low real entries per map:

- *largest*: the k_low largest true magnitudes (before issue #12). Every unrevealed
  public entry larger than the smallest revealed one must then be fake, so the hidden
  real entries are among the smaller ones only;
- *secret random* (what grants do now): a uniformly random subset, fixed per item by a
  keystore secret. It depends on nothing public, so it rules nothing out.

Per map, the supports consistent with a grant number C(candidates, k - k_low), where
candidates are the unrevealed public entries a grantee cannot rule out; the bits lost
are log2 C(k' - k_low, k - k_low) - log2 C(candidates, k - k_low). Prints a markdown
table (mean over maps and items) with the PSNR of each choice's reconstruction.

    python benchmarks/lower_fidelity_grants.py --model runs/small-model --images runs/celeba64
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from imambig.access.secrets import Secret
from imambig.evaluation.metrics import psnr_uint8, to_uint8
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.keys import decode_keys, key_seals, lower_fidelity
from imambig.mechanism.noise_model import fit_noise_model
from imambig.mechanism.record import Ambiguated
from imambig.model.checkpoint import load_model
from imambig.stages.encode_images import encode_images
from imambig.stores.image_store import open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location


def log2_comb(n: np.ndarray, r: int) -> np.ndarray:
    return np.vectorize(lambda x: math.log2(math.comb(int(x), r)) if x >= r else 0.0)(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--fit", type=int, default=2048, help="training images for the noise fit")
    p.add_argument("--items", type=int, default=200, help="test images")
    a = p.parse_args()
    torch.set_num_threads(2)
    model, info, _ = load_model(Location(a.model))
    c = model.config
    store = open_image_store(Location(a.images))
    fit = store.indices("train")[: a.fit]
    noise = fit_noise_model(model, info.model_id,
                            (to_tensor(store.read(fit[s : s + 64]))
                             for s in range(0, len(fit), 64)), 2 * c.k)
    test = store.indices("test")[: a.items]
    images = store.read(test)
    enc = encode_images(model, noise, DecoyMap.for_owner(noise, Secret(bytes(range(32)))),
                        images)
    # A grantee holds the seal: it sees the record under it (imambig.mechanism.seal).
    amb = Ambiguated(enc.mask, enc.values, decode_keys(enc.keys), key_seals(enc.keys)).opened()
    real = amb.real
    magnitude = np.abs(amb.values.astype(np.float32))
    order = np.random.default_rng(0).random(real.shape)  # stands in for the keystore's
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    k, kp = c.k, real.shape[-1]
    print(f"model {info.model_id} (L={c.n_maps}, k={k}, k'={kp}), {len(test)} test images\n")
    print("| k_low | rule | candidates per map (of k'-k_low) | bits lost per map | "
          "unrevealed real above the floor | PSNR (dB) |")
    print("|---|---|---|---|---|---|")
    for k_low in (k // 4, k // 2, 3 * k // 4):
        for rule, scores in (("largest", magnitude), ("secret random", order)):
            shown = lower_fidelity(real, scores, k_low)
            floor = np.where(shown, magnitude, np.inf).min(-1, keepdims=True)
            hidden = ~shown
            above = hidden & (magnitude > floor)
            # A grantee who knows the rule rules out what it excludes: for "largest",
            # every unrevealed entry above the floor; for a secret random order, nothing.
            excluded = above if rule == "largest" else np.zeros_like(above)
            candidates = (hidden & ~excluded).sum(-1)
            lost = log2_comb(np.full(candidates.shape, kp - k_low), k - k_low) - log2_comb(
                candidates, k - k_low)
            with torch.no_grad():
                y = to_uint8(model.decode(amb.guessed_code(shown)))
            psnr = float(psnr_uint8(y, x).mean())
            print(f"| {k_low} | {rule} | {candidates.mean():.1f} of {kp - k_low} | "
                  f"{lost.mean():.1f} | {real[above].mean():.3f} | {psnr:.2f} |")


if __name__ == "__main__":
    main()
