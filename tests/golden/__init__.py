"""Golden digests of one small, fixed encoding.

A guard for changes that must not change a byte of what ``imambig encode`` writes
(restructuring, renaming, moving code): generated images, a ``tiny`` model at its
seeded initial weights (``imambig train --epochs 0``) and two fixed secrets are encoded
into a public store and a keystore on local disk, and the SHA-256 of every stored file
is compared with ``encode_digests.json``. Only the command line is used, so the check
does not depend on where the library keeps its code.

Run state (``_state/``: region markers with timings; ``_leases/``) is left out; nothing
else written depends on the clock or the machine's paths.

After an intended change of the encoding, regenerate the digests with

    python -m tests.golden.make
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from imambig.cli import main
from tests.fixtures_model import make_synthetic_images

DIGESTS = Path(__file__).with_name("encode_digests.json")
N_IMAGES = 64
# Fixed, public test values: never use these for real stores.
SECRETS = {
    "IMAMBIG_OWNER_SECRET": base64.b64encode(bytes(range(32))).decode(),
    "IMAMBIG_KEYSTORE_KEY": base64.b64encode(bytes(range(32, 64))).decode(),
}
RUN_STATE = ("_state/", "_leases/")


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _run(argv: list[str]) -> None:
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"imambig {' '.join(argv)} exited with {code}")


def encode_fixture(workdir: Path) -> dict[str, str]:
    """Build the fixture under ``workdir`` and return {stored file: sha256}.

    The secrets must already be in the environment (``SECRETS``): Dask workers inherit it.
    """
    make_synthetic_images(workdir / "src", N_IMAGES, size=32, seed=0)
    # The source path is recorded in the stores (and enters the store ids): keep it
    # relative, so the digests do not depend on where the fixture is built.
    with _cwd(workdir):
        _run(["ingest", "src", "--out", str(workdir / "images"), "--size", "32",
              "--split", "random:0.8", "--seed", "0", "--workers", "1"])
    _run(["train", "--images", str(workdir / "images"), "--out", str(workdir / "model"),
          "--preset", "tiny", "--epochs", "0", "--seed", "0", "--precision", "fp32"])
    _run(["encode", "--images", str(workdir / "images"), "--model", str(workdir / "model"),
          "--public", str(workdir / "public"), "--keys", str(workdir / "keys"),
          "--chunk-items", "16", "--workers", "1"])
    return {**tree_digest(workdir / "public", "public"), **tree_digest(workdir / "keys", "keys")}


def tree_digest(root: Path, label: str) -> dict[str, str]:
    """sha256 of every file under ``root`` (as ``label/relative/path``), run state excluded."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not any(part in f"{rel}/" for part in RUN_STATE):
            out[f"{label}/{rel}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def load_digests() -> dict[str, str]:
    return json.loads(DIGESTS.read_text())
