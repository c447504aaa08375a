"""Bytes per image of each kind of key, for a model's code sizes (default: the paper's).

Prints a markdown table: the full key (seal + support), the lower-fidelity key that
grants carry (the revealed entries themselves: positions and values, measured on real
key bytes), and, on paper, the alternative design of *layered seals* (the record's real
entries split into nested layers, each sealed under its own seal, a grant carrying one
seal and its layers' supports), and the record bytes per image at k' = k and k' = 2k.

    python benchmarks/grant_bytes.py [--maps 20 --code-length 512 --k 128 --layers 4]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from imambig.mechanism.grant_entries import encode_entries_keys, entries_key_bytes
from imambig.mechanism.keys import HEADER_BYTES, key_bytes
from imambig.mechanism.quantizer import quantize
from imambig.mechanism.seal import SEAL_BYTES


def measured_entries_key(n_maps: int, m: int, k_low: int) -> int:
    """Length of a real lower-fidelity key of random entries (checked against the
    formula: every key of a shape has the same length)."""
    rng = np.random.default_rng(0)
    mask = np.zeros((1, n_maps, m), bool)
    for row in range(n_maps):
        mask[0, row, rng.choice(m, k_low, replace=False)] = True
    values = quantize(torch.randn(1, n_maps, k_low)).numpy()
    (key,) = encode_entries_keys(mask, values)
    assert len(key) == entries_key_bytes(n_maps, m, k_low)
    return len(key)


def layered_key(n_maps: int, k: int, k_public: int, layers: int, used: int) -> int:
    """Layered seals, on paper: header + one seal + ``used`` layers' supports, each layer
    k/layers real among k'/layers public entries per map."""
    bits = used * n_maps * math.log2(math.comb(k_public // layers, k // layers))
    return HEADER_BYTES + SEAL_BYTES + math.ceil(bits / 8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maps", type=int, default=20)
    p.add_argument("--code-length", type=int, default=512)
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    a = p.parse_args()
    L, m, k, J = a.maps, a.code_length, a.k, a.layers
    print(f"L={L}, m={m}, k={k}; layered seals with {J} layers of k/{J}\n")
    print("| grant | k' | support key + seal (before: opened every entry) | entries key (now) "
          "| layered seals (on paper) |")
    print("|---|---|---|---|---|")
    for kp in (2 * k, k):
        for used in range(1, J + 1):
            k_low = k * used // J
            full = "full key" if k_low == k else f"k_low = {k_low}"
            entries = measured_entries_key(L, m, k_low) if k_low < k else "–"
            print(f"| {full} | {kp} | {key_bytes(L, kp, k_low)} | {entries} | "
                  f"{layered_key(L, k, kp, J, used)} |")
    print("\nPublic record per image before compression (support bitmask + float16 values):")
    for kp in (2 * k, k):
        print(f"- k' = {kp}: {L * m // 8 + 2 * L * kp} bytes")


if __name__ == "__main__":
    main()
