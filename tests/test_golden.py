"""Golden bytes (``tests/golden``): what encoding writes, checked two ways.

- On every machine: the mechanism, seal and key coding from stored bottlenecks give
  exactly the stored digests of records, keys, grant entries, record digests and
  keystore rows (``tests/golden/mechanism.py``). These never skip.
- Per machine kind: encoding a fixed fixture through the command line writes exactly
  the committed files (``encode_digests.json``); the encoder's float kernels round
  differently on other kinds, so a kind without an entry skips this one.

A failure means the encoding changed. If that was intended, regenerate with
``python -m tests.golden.make`` and commit the files with the change.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from tests.golden import encode_fixture, load_digests, machine_kind
from tests.golden import mechanism as M


def _changed(got: dict[str, list[str]], want: dict[str, list[str]]) -> dict[str, list[int]]:
    return {name: [i for i, (a, b) in enumerate(zip(got[name], want[name], strict=True))
                   if a != b] for name in want if got[name] != want[name]}


@pytest.mark.parametrize("threads", [1, 3])
def test_mechanism_matches_the_stored_bytes(tmp_path: Path, threads: int) -> None:
    setting, tensors, noise = M.load()
    want = setting.pop("digests")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = M.digests(setting, tensors, noise, tmp_path)
    finally:
        torch.set_num_threads(before)
    assert sorted(got) == sorted(want)
    assert all(len(got[name]) == len(want[name]) for name in want)
    changed = _changed(got, want)
    assert not changed, (f"the mechanism, seal or key coding changed on {machine_kind()}: "
                         f"items (rows) differing per digest: {changed}")


def test_the_stored_check_sees_one_changed_item(tmp_path: Path) -> None:
    """Each item's bytes depend on its own bottleneck alone: one changed bottleneck
    changes that item's record, keys and row, nothing else."""
    setting, tensors, noise = M.load()
    want = setting.pop("digests")
    h = tensors["bottlenecks"].copy()
    h[37] += 0.25
    got = M.digests(setting, {**tensors, "bottlenecks": h}, noise, tmp_path)
    row = 37 // setting["chunk_items"]
    assert _changed(got, want) == {"records": [37], "keys": [37], "entries_keys": [37],
                                   "record_digests": [37], "keystore_rows": [row]}


_PROBE = "import json; from tests.test_golden import probe; print(json.dumps(probe()))"


def probe() -> dict[str, str]:
    """Digests of the mechanism's float stages on the stored bottlenecks (unsealed)."""
    setting, tensors, noise_bytes = M.load()
    model, noise, _ = M.encode(setting, tensors, noise_bytes)
    decoys = DecoyMap.for_owner(noise, M.OWNER_SECRET)
    h = torch.from_numpy(tensors["bottlenecks"])
    with torch.no_grad():
        amb = ambiguate(model, h, noise, decoys, sealed=False)
        parts = {"decoy": decoys.decoy(h).numpy(), "projections": decoys.projections(h).numpy(),
                 "support": amb.mask, "values": amb.values}
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
            for k, v in parts.items()}


def test_mechanism_is_the_same_under_other_float_kernels() -> None:
    """Other SGEMM kernels (MKL's reproducible branch stands for another CPU's: MKL
    takes its AVX-512 kernels on Intel CPUs only) and torch's scalar kernels round the
    float32 products and reductions differently; the mechanism's own stages, correctly
    rounded, stay bit for bit the same."""
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default",
           "OMP_NUM_THREADS": "2", "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == probe()


def test_encoding_matches_the_golden_digests(tmp_path: Path) -> None:
    want = load_digests()
    if want is None:
        pytest.skip(f"no golden encode digests for this machine kind ({machine_kind()}): its "
                    "float kernels round the encoder differently; the stored-bytes mechanism "
                    "check above ran; add this kind's with python -m tests.golden.make --add")
    got = encode_fixture(tmp_path)
    assert sorted(got) == sorted(want), "other files were written"
    changed = sorted(name for name in want if got[name] != want[name])
    assert not changed, f"{len(changed)} stored files changed, e.g. {changed[:5]}"
