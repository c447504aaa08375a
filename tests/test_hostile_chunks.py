"""A storage provider's chunk bytes cannot exhaust the owner's or a user's memory.

Each case tampers with a copy of an encoded collection the way a provider could (chunk
data whose codec headers claim gigabytes, an object far larger than a chunk, an item
count raised in the attributes), then runs the reader that would meet it in a fresh
process: it must fail with one of imambig's exceptions, within 5 s, with a peak-memory
growth at most twice that of the same reader on the honest copy (plus a small floor for
allocator noise).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numcodecs
import pytest

from imambig.stores.location import Location

FLOOR = 16 << 20  # bytes of RSS growth below which a difference is allocator noise

# Runs in the child: SETUP, then OP measured (peak RSS growth, seconds, what was raised).
_CHILD = """
import json, resource, sys, time
from imambig.errors import ImambigError
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a runaway fails, not the host
{setup}
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def op():
{op}
try:  # warm-up on the honest copy: imports, thread pools, codec tables
    warm()
except Exception:
    pass
before, t0 = peak(), time.perf_counter()
try:
    op()
    raised, ours = None, True
except Exception as exc:
    raised, ours = f"{{type(exc).__name__}}: {{str(exc)[:300]}}", isinstance(exc, ImambigError)
print(json.dumps({{"growth": peak() - before, "seconds": time.perf_counter() - t0,
                  "raised": raised, "ours": ours}}))
"""


def _measure(setup: str, op: str, env: dict[str, str]) -> dict:
    code = _CHILD.format(setup=textwrap.dedent(setup),
                         op=textwrap.indent(textwrap.dedent(op), "    "))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env},
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _copy(job, tmp_path: Path, tag: str) -> tuple[Path, Path]:
    public, keys = tmp_path / f"public-{tag}", tmp_path / f"keys-{tag}"
    shutil.copytree(job.public_root.url, public)
    shutil.copytree(job.keys_root.url, keys)
    return public, keys


def _version(root: Path) -> Path:
    return root / json.loads((root / "current.json").read_text())["version"]


def _zstd_bomb(claimed: int) -> bytes:
    """A zstd frame of RLE blocks: 4 bytes per 128 KiB of zeros, its header honest."""
    block = 1 << 17
    frame = bytearray(b"\x28\xb5\x2f\xfd\xe0") + struct.pack("<Q", claimed)
    blocks = claimed // block
    for i in range(blocks):
        header = (1 if i == blocks - 1 else 0) | (1 << 1) | (block << 3)  # RLE block
        frame += header.to_bytes(3, "little") + b"\0"
    return bytes(frame)


def _vlen_count_bomb() -> bytes:
    """An 8 KB vlen-utf8 chunk whose count claims 2^32 - 1 strings, zstd-compressed."""
    return bytes(numcodecs.Zstd().encode(b"\xff\xff\xff\xff" + b"\0" * 8188))


def _blosc_claim(chunk: bytes, claimed: int) -> bytes:
    out = bytearray(chunk)
    out[4:8] = struct.pack("<I", claimed)
    return bytes(out)


def _raise_n_items(store: Path, n: int) -> None:
    """The item count and every array's length raised, consolidated copy too."""
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["n_items"] = n
    metas = [doc.get("consolidated_metadata", {}).get("metadata", {})]
    for name in ("support", "values", "item_id"):
        path = store / name / "zarr.json"
        meta = json.loads(path.read_text())
        meta["shape"][0] = n
        path.write_text(json.dumps(meta))
        for m in metas:
            if name in m:
                m[name]["shape"][0] = n
    (store / "zarr.json").write_text(json.dumps(doc))


_GRANT_SETUP = """
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.identity import new_identity
from imambig.access.owner_key import signing_key
from imambig.access.secrets import Secrets
from imambig.stages.share import issue_grant
from imambig.stores.location import Location
from imambig.stores.image_store import open_image_store
secrets = Secrets()
names = [str(n) for n in open_image_store(Location({images!r})).item_ids()[:3]]
def grant(public, keys):
    return issue_grant(Location(public), Location(keys), names, new_identity().public_text(),
                       LocalKeyProvider.from_secrets(secrets), signing_key(secrets.signing_key))
def warm():
    grant({honest_public!r}, {honest_keys!r})
"""

_READ_SETUP = """
import numpy as np
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from storage_schemas.validate import validate
def warm():
    s = PublicStore.open(Location({honest!r}))
    s.read(np.arange(70)); s.item_ids(); validate(Location({honest!r}))
"""


def _case(job, tmp_path: Path, env: dict[str, str], tag: str, tamper, setup: str, op: str,
          **fmt: str) -> tuple[dict, dict]:
    """(honest, tampered) measurements of ``op`` on a copy tampered by ``tamper``."""
    honest_pub, honest_keys = _copy(job, tmp_path, f"honest-{tag}")
    bad_pub, bad_keys = _copy(job, tmp_path, f"bad-{tag}")
    tamper(_version(bad_pub))
    names = dict(images=job.images.url, honest_public=str(honest_pub),
                 honest_keys=str(honest_keys), honest=str(_version(honest_pub)), **fmt)
    honest = _measure(setup.format(**names), op.format(
        public=str(honest_pub), keys=str(honest_keys), store=str(_version(honest_pub))), env)
    bad = _measure(setup.format(**names), op.format(
        public=str(bad_pub), keys=str(bad_keys), store=str(_version(bad_pub))), env)
    return honest, bad


def _assert_bounded(honest: dict, bad: dict) -> None:
    assert honest["raised"] is None, honest
    assert bad["raised"] is not None and bad["ours"], bad
    assert bad["seconds"] < 5, bad
    assert bad["growth"] <= max(2 * honest["growth"], FLOOR), (honest, bad)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _sparse(path: Path, size: int) -> None:
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)


CASES = {
    # codec headers that claim far more than the chunk holds
    "zstd item_id bomb": (lambda v: _write(v / "item_id/c/0", _zstd_bomb(1 << 30)),
                          _READ_SETUP, "PublicStore.open(Location({store!r})).item_ids()"),
    "vlen count claims 2^32": (lambda v: _write(v / "item_id/c/0", _vlen_count_bomb()),
                               _READ_SETUP, "PublicStore.open(Location({store!r})).item_ids()"),
    "blosc header claims 2 GiB": (
        lambda v: _write(v / "values/c/0/0/0",
                         _blosc_claim((v / "values/c/0/0/0").read_bytes(), 1 << 31)),
        _READ_SETUP, "PublicStore.open(Location({store!r})).read(np.arange(70))"),
    # an object far larger than any chunk (a sparse 2 GiB file: cheap to make)
    "support chunk of 2 GiB": (lambda v: _sparse(v / "support/c/0/0/0", 2 << 30),
                               _READ_SETUP,
                               "PublicStore.open(Location({store!r})).read(np.arange(70))"),
    "zarr.json of 2 GiB": (lambda v: _sparse(v / "zarr.json", 2 << 30),
                           _READ_SETUP, "PublicStore.open(Location({store!r}))"),
    # validation meets every chunk
    "validate: zstd bomb": (lambda v: _write(v / "item_id/c/0", _zstd_bomb(1 << 30)),
                            _READ_SETUP, "assert not validate(Location({store!r})).ok\n"
                            "raise ImambigError('reported')"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_chunk_bytes_cannot_exhaust_memory(case, encoded, module_owner_env, tmp_path) -> None:
    job, _ = encoded
    tamper, setup, op = CASES[case]
    honest, bad = _case(job, tmp_path, module_owner_env, case.replace(" ", "_")[:12],
                        tamper, setup, op)
    if case.startswith("validate"):  # validate reports (op raises once it has)
        honest = {**honest, "raised": None}
    _assert_bounded(honest, bad)


def test_validate_names_the_bad_chunk(encoded, tmp_path) -> None:
    from storage_schemas.validate import validate

    job, _ = encoded
    public, _ = _copy(job, tmp_path, "v")
    _write(_version(public) / "item_id/c/0", _zstd_bomb(1 << 30))
    report = validate(Location(str(_version(public))))
    assert any("item_id/c/0" in v for v in report.violations), report.summary()


def test_raised_item_count_is_refused_by_grant_and_validate(encoded, module_owner_env,
                                                            tmp_path) -> None:
    """2^31 items claimed: the owner's grant takes the count from its keystore's
    authenticated attributes, and validation counts chunk objects before reading."""
    job, _ = encoded
    honest, bad = _case(job, tmp_path, module_owner_env, "n_items",
                        lambda v: _raise_n_items(v, 1 << 31), _GRANT_SETUP,
                        "grant({public!r}, {keys!r})")
    _assert_bounded(honest, bad)
    assert "claims 2,147,483,648 items" in bad["raised"], bad
    from storage_schemas.validate import validate

    public, _ = _copy(job, tmp_path, "v2")
    _raise_n_items(_version(public), 1 << 31)
    report = validate(Location(str(_version(public))))
    assert any("chunks (never written" in v for v in report.violations), report.summary()
