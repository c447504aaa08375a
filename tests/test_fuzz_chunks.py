"""Chunk data fuzzed: every chunk of a public store and of a keystore, mutated byte by
byte and header field by header field, is read back (records, ids, keystore rows, and
validation) and either accepted or refused with imambig's own exceptions, each within a
second: never a codec's ``RuntimeError``, a ``MemoryError`` or a hang."""

from __future__ import annotations

import shutil
import signal
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from imambig.errors import ImambigError
from imambig.stores.location import Location
from storage_schemas.validate import validate
from tests import corpus as C
from tests.test_fuzz_parsers import byte_mutations

ROUNDS = 400  # per chunk and kind of mutation
MUTATIONS = {"count": 0}  # how many inputs ran (reported by the last test)

_ODD_U32 = [0, 1, 2, 3, 255, 256, 65535, 1 << 24, 1 << 31, (1 << 32) - 1]


def header_mutations(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """Codec headers rewritten: one little-endian field in the first 24 bytes set to
    an odd value (sizes, counts, block sizes, frame descriptors)."""
    for _ in range(n):
        out = bytearray(data)
        at = int(rng.integers(0, max(1, min(len(out) - 1, 24))))
        width = int(rng.choice([1, 2, 4, 8]))
        value = int(rng.choice(_ODD_U32)) & ((1 << (8 * width)) - 1)
        out[at : at + width] = value.to_bytes(width, "little")
        yield bytes(out)


class _Hang(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise _Hang


def _fuzz_file(sample: Path, relative: str, parse: Callable[[Path], object],
               inputs: Iterator[bytes], work: Path) -> int:
    """Write each input over ``relative`` in a copy of ``sample`` and parse the copy."""
    refused = 0
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(sample, work)
    original = (work / relative).read_bytes()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for data in inputs:
            MUTATIONS["count"] += 1
            (work / relative).write_bytes(data)
            signal.setitimer(signal.ITIMER_REAL, 2.0)
            try:
                parse(work)
            except ImambigError:
                refused += 1
            except _Hang:
                pytest.fail(f"parsing {relative} hung for input {data[:64]!r}...")
            except Exception as exc:
                pytest.fail(f"{type(exc).__name__} escaped for {relative} = "
                            f"{data[:64]!r}...: {exc}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
        (work / relative).write_bytes(original)
    return refused


def _validate(folder: Path) -> object:
    report = validate(Location(str(folder)))
    if not report.ok:
        raise ImambigError(report.summary())
    return report


@pytest.fixture(scope="module")
def public_sample(tmp_path_factory) -> Path:
    return Path(C.public_store_sample(tmp_path_factory.mktemp("pub") / "store").url)


@pytest.mark.parametrize("chunk", ["support/c/0/0/0", "values/c/1/0/0", "item_id/c/0"])
@pytest.mark.parametrize("parse", [C.parse_public_store, _validate], ids=["read", "validate"])
def test_fuzz_public_store_chunks(chunk, parse, public_sample, tmp_path) -> None:
    rng = np.random.default_rng(abs(hash(chunk)) % 1000)
    data = (public_sample / chunk).read_bytes()
    n = ROUNDS if parse is C.parse_public_store else ROUNDS // 4
    refused = _fuzz_file(public_sample, chunk, parse, byte_mutations(data, rng, n),
                         tmp_path / "w")
    refused += _fuzz_file(public_sample, chunk, parse, header_mutations(data, rng, n),
                          tmp_path / "w")
    assert refused > n // 2  # most mutations of a chunk must be caught


def test_fuzz_keystore_chunks(tmp_path) -> None:
    sample = Path(C.keystore_sample(tmp_path / "ks").url)
    rng = np.random.default_rng(5)
    data = (sample / "sealed/c/1/0").read_bytes()
    refused = _fuzz_file(sample, "sealed/c/1/0", C.parse_keystore,
                         header_mutations(data, rng, ROUNDS), tmp_path / "w")
    assert refused == ROUNDS  # sealed: every change fails authentication


def test_crafted_codec_headers_are_refused(public_sample, tmp_path) -> None:
    """The three claims a provider can make, each refused by name."""
    values = (public_sample / "values/c/0/0/0").read_bytes()
    claims = {
        "values/c/0/0/0": values[:4] + struct.pack("<I", 1 << 31) + values[8:],
        "item_id/c/0": b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", 1 << 40) + b"\x01\x00\x00",
        "support/c/0/0/0": b"\0" * 10,
    }
    for relative, data in claims.items():
        work = tmp_path / relative.replace("/", "-")
        shutil.copytree(public_sample, work)
        (work / relative).write_bytes(data)
        with pytest.raises(ImambigError, match=f"chunk {relative}"):
            C.parse_public_store(work)


def test_enough_chunk_mutations_ran() -> None:
    if MUTATIONS["count"] == 0:
        pytest.skip("run with the rest of this module")
    assert MUTATIONS["count"] >= 3 * ROUNDS * 2 + ROUNDS, MUTATIONS
