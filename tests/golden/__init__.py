"""Golden digests of one small, fixed encoding.

A guard for changes that must not change a byte of what ``imambig encode`` writes
(restructuring, renaming, moving code): generated images, a ``tiny`` model at its
seeded initial weights (``imambig train --epochs 0``) and two fixed secrets are encoded
into a public store and a keystore on local disk, and the SHA-256 of every stored file
is compared with ``encode_digests.json``. Only the command line is used, so the check
does not depend on where the library keeps its code; it runs in fresh processes on one
torch thread, since the noise fit's float rounding depends on the thread count.

Run state (``_state/``: region markers with timings; ``_leases/``) is left out; nothing
else written depends on the clock or the machine's paths. What is written does depend
on the CPU's float kernels: an AVX2 and an AVX-512 machine round the encoder's sums
differently, and the seals make any such difference change every record. So the digests
are kept per machine kind (CPU vendor, torch's CPU capability, torch version); on a
kind with no entry that test skips and says how to add one. What follows the encoder
(mechanism, seal, key coding, keystore rows) is checked from stored bottlenecks on
every machine, never skipped (``tests/golden/mechanism.py``); ``README.md`` here has
the measured share of records that differ between machine kinds.

After an intended change of the encoding, regenerate the digests with

    python -m tests.golden.make

which replaces every entry by this machine kind's (the others are stale by then) and
redoes the mechanism digests; on another kind, ``python -m tests.golden.make --add``
adds that kind's entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.fixtures_model import make_synthetic_images

DIGESTS = Path(__file__).with_name("encode_digests.json")
N_IMAGES = 64
# Fixed, public test values: never use these for real stores.
SECRETS = {
    "IMAMBIG_OWNER_SECRET": base64.b64encode(bytes(range(32))).decode(),
    "IMAMBIG_KEYSTORE_KEY": base64.b64encode(bytes(range(32, 64))).decode(),
}
RUN_STATE = ("_state/", "_leases/")


def _run(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, **SECRETS, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "imambig.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"imambig {' '.join(argv)} exited with {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def encode_fixture(workdir: Path, precision: str | None = None) -> dict[str, str]:
    """Build the fixture under ``workdir`` and return {stored file: sha256}; encoded at
    ``precision`` where given (else ``auto``, as the digests were made)."""
    make_synthetic_images(workdir / "src", N_IMAGES, size=32, seed=0)
    # The source path is recorded in the stores (and enters the store ids): keep it
    # relative, so the digests do not depend on where the fixture is built.
    _run(["ingest", "src", "--out", str(workdir / "images"), "--size", "32",
          "--split", "random:0.8", "--seed", "0", "--workers", "1"], workdir)
    _run(["train", "--images", str(workdir / "images"), "--out", str(workdir / "model"),
          "--preset", "tiny", "--epochs", "0", "--minutes", "0", "--loss", "bce", "--ema", "0",
          "--seed", "0", "--precision", "fp32"], workdir)
    _run(["encode", "--images", str(workdir / "images"), "--model", str(workdir / "model"),
          "--public", str(workdir / "public"), "--keys", str(workdir / "keys"),
          "--chunk-items", "16", "--workers", "1",
          *(["--precision", precision] if precision else [])], workdir)
    return {**tree_digest(workdir / "public", "public"), **tree_digest(workdir / "keys", "keys")}


def tree_digest(root: Path, label: str) -> dict[str, str]:
    """sha256 of every file under ``root`` (as ``label/relative/path``), run state excluded."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not any(part in f"{rel}/" for part in RUN_STATE):
            out[f"{label}/{rel}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def machine_kind() -> str:
    """What the encoder's float rounding depends on, as a digest entry's name."""
    vendor = "unknown-cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{vendor}/{torch.backends.cpu.get_cpu_capability()}/torch-{torch.__version__}"


def load_all() -> dict[str, dict[str, str]]:
    return json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}


def load_digests(kind: str | None = None) -> dict[str, str] | None:
    """This machine kind's digests, or None where none were made on such a machine."""
    return load_all().get(kind or machine_kind())
