"""Write ``tests/golden/reference_paper.npz``: the reference network's outputs for
seeded weights and input, which ``tests/test_reference.py`` holds ``paper`` to.

    python benchmarks/make_reference_golden.py --reference CHECKOUT

CHECKOUT is a checkout of the paper's code (its ``models.py``). Run once; the repository
keeps the numbers, never that code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from reference_checkout import import_reference, reference_twin

from imambig.config import preset
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.reference import seeded_state

SEED = 20200201  # weights; the input uses SEED + 1
OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "reference_paper.npz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reference", required=True, help="checkout of the paper's code")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    models = import_reference(a.reference)
    c = preset("paper")
    ours = SparseAutoencoder(c).eval()
    ours.load_state_dict(seeded_state(ours, SEED))
    ref = reference_twin(models, ours)
    x = np.random.default_rng(SEED + 1).random((1, 3, c.image_height, c.image_width))
    x = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        code = ref.encoder(x)
        out = ref.decoder(code)
    support = code[0].abs().topk(c.k, dim=-1).indices.sort(dim=-1).values
    np.savez_compressed(
        a.out, seed=SEED, slope=0.01, k=c.k,
        support=support.numpy().astype(np.int16),
        values=code[0].gather(-1, support).numpy(),
        logits=out[0].numpy(),
    )
    print(f"wrote {a.out} ({a.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
