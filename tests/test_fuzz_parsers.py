"""Every parser of outside input, fed a few hundred random mutations of a valid sample,
either accepts the result or raises one of the project's own exceptions (issue #12,
item 9): never an ``IndexError``, ``struct.error``, ``KeyError`` or a third-party type."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imambig.config import PRESETS
from imambig.errors import ImambigError
from imambig.model import checkpoint as ckpt
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stores.location import Location
from tests import corpus as C

ROUNDS = 300


def byte_mutations(data: bytes, rng: np.random.Generator, n: int = ROUNDS) -> Iterator[bytes]:
    """Bit flips, truncations, insertions, deletions, duplications and overwrites."""
    for _ in range(n):
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, max(len(out), 1)))
            kind = int(rng.integers(0, 7))
            if kind == 0 and out:
                out[at] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:
                del out[at:]
            elif kind == 2:
                out[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
            elif kind == 3:
                del out[at : at + int(rng.integers(1, 64))]
            elif kind == 4:
                out[at:at] = out[at : at + int(rng.integers(1, 64))]
            elif kind == 5 and out:
                out[at] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, ord('"'), ord("{")]))
            else:
                out.extend(rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8).tobytes())
        if out == data:  # a mutation that undid itself: make it one
            out.append(0)
        yield bytes(out)


_ODD_VALUES: list[Any] = [None, True, -1, 0, 1 << 62, 10**30, 1.5, float("inf"), "", "x" * 300,
                          "../../etc", [], {}, [1, 2, 3], {"name": "numcodecs.pickle"}]


def json_mutations(doc: Any, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """Structure-aware: one value somewhere in ``doc`` replaced by an odd one, or a key
    removed."""
    for _ in range(n):
        copy = json.loads(json.dumps(doc))
        node, path = copy, []
        while isinstance(node, dict | list) and node and rng.random() < 0.75:
            key = (list(node)[int(rng.integers(0, len(node)))] if isinstance(node, dict)
                   else int(rng.integers(0, len(node))))
            path.append((node, key))
            node = node[key]
        if path:
            parent, key = path[-1]
            if isinstance(parent, dict) and rng.random() < 0.2:
                del parent[key]
            else:
                parent[key] = _ODD_VALUES[int(rng.integers(0, len(_ODD_VALUES)))]
        yield json.dumps(copy).encode()


def _fuzz(parse: Callable[[bytes], object], inputs: Iterator[bytes]) -> int:
    """Feed every input; only the project's exceptions may come out. Returns how many
    were refused."""
    refused = 0
    for data in inputs:
        try:
            parse(data)
        except ImambigError:
            refused += 1
        except Exception as exc:  # the finding: anything else escaped the parser
            pytest.fail(f"{type(exc).__name__} escaped for input {data[:80]!r}...: {exc}")
    return refused


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(12)


def test_fuzz_keys(rng) -> None:
    t0 = time.perf_counter()
    assert _fuzz(C.parse_key, byte_mutations(C.key_sample(), rng)) > ROUNDS // 2
    assert time.perf_counter() - t0 < 30


def test_fuzz_grants(rng) -> None:
    blob = C.sealed_grant_sample()
    assert _fuzz(C.parse_grant, byte_mutations(blob, rng)) == ROUNDS


def test_fuzz_grant_bodies(rng) -> None:
    body = C.grant_sample().to_bytes()
    _fuzz(C.parse_grant_body, byte_mutations(body, rng))
    _fuzz(C.parse_grant_body, json_mutations(json.loads(body), rng, ROUNDS))


def test_fuzz_identity_files(rng, tmp_path) -> None:
    _fuzz(lambda d: C.parse_identity_file(d, tmp_path),
          byte_mutations(C.identity_file_sample(), rng))


def _store_fuzz(sample: Path, parse: Callable[[Path], object], files: list[str],
                rng: np.random.Generator, tmp_path: Path) -> None:
    """Mutate one metadata file of a copy of ``sample`` per round."""
    originals = {f: (sample / f).read_bytes() for f in files}
    work = tmp_path / "work"

    def parse_with(name: str) -> Callable[[bytes], object]:
        def run(data: bytes) -> object:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(sample, work)
            (work / name).write_bytes(data)
            return parse(work)
        return run

    per_file = ROUNDS // len(files)
    for name, data in originals.items():
        _fuzz(parse_with(name), byte_mutations(data, rng, per_file // 2))
        _fuzz(parse_with(name), json_mutations(json.loads(data), rng, per_file // 2))


def test_fuzz_public_store_metadata(rng, tmp_path) -> None:
    sample = Path(C.public_store_sample(tmp_path / "pub").url)
    _store_fuzz(sample, C.parse_public_store,
                ["zarr.json", "values/zarr.json", "support/zarr.json", "item_id/zarr.json"],
                rng, tmp_path)


def test_fuzz_keystore_metadata_and_rows(rng, tmp_path) -> None:
    sample = Path(C.keystore_sample(tmp_path / "ks").url)
    _store_fuzz(sample, C.parse_keystore, ["zarr.json", "sealed/zarr.json"], rng, tmp_path)
    row = (sample / "sealed" / "c" / "0" / "0").read_bytes()
    work = tmp_path / "rows"

    def parse_row(data: bytes) -> object:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(sample, work)
        (work / "sealed" / "c" / "0" / "0").write_bytes(data)
        return C.parse_keystore(work)

    assert _fuzz(parse_row, byte_mutations(row, rng, ROUNDS // 2)) == ROUNDS // 2


def test_fuzz_model_files(rng, tmp_path) -> None:
    torch.manual_seed(0)
    folder = Location(str(tmp_path / "model"))
    mid = ckpt.save_model(folder, SparseAutoencoder(PRESETS["tiny"]), {})
    data = Path(folder.url, ckpt.MODEL_FILE).read_bytes()
    head = data[:4096]
    _fuzz(lambda d: ckpt.verify_model_bytes(d + data[4096:], "model", mid),
          byte_mutations(head, rng, ROUNDS // 2))


def test_fuzz_lower_fidelity_keys(rng) -> None:
    from imambig.mechanism.grant_entries import decode_entries_keys, encode_entries_keys
    from imambig.mechanism.quantizer import quantize

    mask = np.zeros((1, 4, 64), bool)
    for row in range(4):
        mask[0, row, rng.choice(64, 8, replace=False)] = True
    (key,) = encode_entries_keys(mask, quantize(torch.randn(1, 4, 8)).numpy())
    assert _fuzz(lambda data: decode_entries_keys([data]), byte_mutations(key, rng)) > ROUNDS // 2
