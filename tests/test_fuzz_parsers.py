"""Every parser of outside input, fed random mutations of a valid sample, either accepts
the result or raises one of the project's own exceptions: never an ``IndexError``,
``struct.error``, ``KeyError``, ``RecursionError`` or a third-party type, and never hangs
(each input has ``PER_INPUT_S`` seconds).

Mutations: bytes (flips, cuts, insertions), JSON structure (a value replaced by an odd
one), deep nesting (a value replaced by arrays or objects nested up to 200,000 deep) and,
for noise files, the .npy headers of their members (shapes, dtypes, orders, raw bytes).
``MUTATIONS`` counts the inputs fed to each parser; ``PLAN`` is what each test must
reach (run with ``-s`` to see the counts)."""

from __future__ import annotations

import ast
import io
import json
import shutil
import signal
import struct
import time
import zipfile
from collections import Counter
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
PER_INPUT_S = 5.0  # a parser that takes longer on one input hangs (the acceptance's bound)

# Inputs per parser (bytes + JSON structure + nesting, or + headers for noise files).
PLAN: dict[str, int] = {
    "key": 600, "grant": 600, "grant-body": 900, "identity-file": ROUNDS,
    "model-header": 1000, "model-config": 800, "current.json": 1500, "noise-file": 1200,
    "lease": 1500, "region-marker": 900, "release-record": 600, "manifest": 600,
    "evaluation": 300, "lower-fidelity-key": ROUNDS,
}
MUTATIONS: Counter[str] = Counter()


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


_DEEP = "\u0000deep\u0000"  # placeholder swapped for the nested text after json.dumps


def nested_mutations(doc: Any, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """Deep nesting injected: one value somewhere in ``doc`` (or the whole document)
    replaced by arrays or objects nested 50 to 200,000 deep."""
    for _ in range(n):
        depth = int(rng.choice([50, 900, 990, 1100, 20_000, 200_000]))
        opening, closing = [("[", "]"), ('{"a":', "}"), ('[{"":', "}]")][int(rng.integers(0, 3))]
        deep = opening * depth + "0" + closing * depth
        copy = json.loads(json.dumps(doc))
        node, parent, key = copy, None, None
        while isinstance(node, dict | list) and node and rng.random() < 0.7:
            parent = node
            key = (list(node)[int(rng.integers(0, len(node)))] if isinstance(node, dict)
                   else int(rng.integers(0, len(node))))
            node = node[key]
        if parent is None:
            yield deep.encode()
            continue
        parent[key] = _DEEP
        yield json.dumps(copy).replace(json.dumps(_DEEP), deep).encode()


def all_json_mutations(raw: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """A third each of byte, structure and nesting mutations of the JSON ``raw``."""
    doc = json.loads(raw)
    yield from byte_mutations(raw, rng, n - 2 * (n // 3))
    yield from json_mutations(doc, rng, n // 3)
    yield from nested_mutations(doc, rng, n // 3)


class _Hang(BaseException):
    """Raised by the timer in a parser that ran past ``PER_INPUT_S``."""


def _alarm(*_: object) -> None:
    raise _Hang


def _fuzz(parse: Callable[[bytes], object], inputs: Iterator[bytes], name: str = "other") -> int:
    """Feed every input; only the project's exceptions may come out, each within
    ``PER_INPUT_S``. Counts the inputs under ``name``; returns how many were refused."""
    refused = 0
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for data in inputs:
            MUTATIONS[name] += 1
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, PER_INPUT_S)
            try:
                parse(data)
            except ImambigError:
                refused += 1
            except _Hang:
                pytest.fail(f"{name}: hang (over {PER_INPUT_S} s) on input {data[:80]!r}...")
            except Exception as exc:  # the finding: anything else escaped the parser
                pytest.fail(f"{name}: {type(exc).__name__} escaped for input "
                            f"{data[:80]!r}...: {str(exc)[:300]}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if time.perf_counter() - t0 > PER_INPUT_S:  # in C code the timer waits
                pytest.fail(f"{name}: hang (over {PER_INPUT_S} s) on input {data[:80]!r}...")
    finally:
        signal.signal(signal.SIGALRM, previous)
    return refused


@pytest.fixture(scope="module", autouse=True)
def _counts() -> Iterator[None]:
    yield
    mine = sum(MUTATIONS[k] for k in PLAN)
    print(f"\nfuzz inputs per parser: {dict(sorted(MUTATIONS.items()))}; "
          f"{mine:,} for {len(PLAN)} parsers, {sum(MUTATIONS.values()):,} in all")


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(12)


def test_fuzz_keys(rng) -> None:
    n = PLAN["key"]
    assert _fuzz(C.parse_key, byte_mutations(C.key_sample(), rng, n), "key") > n // 2


def test_fuzz_grants(rng) -> None:
    blob, n = C.sealed_grant_sample(), PLAN["grant"]
    assert _fuzz(C.parse_grant, byte_mutations(blob, rng, n), "grant") == n


def test_fuzz_grant_bodies(rng) -> None:
    body = C.grant_sample().to_bytes()
    _fuzz(C.parse_grant_body, all_json_mutations(body, rng, PLAN["grant-body"]), "grant-body")


def test_fuzz_identity_files(rng, tmp_path) -> None:
    _fuzz(lambda d: C.parse_identity_file(d, tmp_path),
          byte_mutations(C.identity_file_sample(), rng), "identity-file")


def _store_fuzz(sample: Path, parse: Callable[[Path], object], files: list[str],
                rng: np.random.Generator, tmp_path: Path, label: str) -> None:
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
        _fuzz(parse_with(name), byte_mutations(data, rng, per_file // 2), label)
        _fuzz(parse_with(name), json_mutations(json.loads(data), rng, per_file // 2), label)


def test_fuzz_public_store_metadata(rng, tmp_path) -> None:
    sample = Path(C.public_store_sample(tmp_path / "pub").url)
    _store_fuzz(sample, C.parse_public_store,
                ["zarr.json", "values/zarr.json", "support/zarr.json", "item_id/zarr.json"],
                rng, tmp_path, "public-store")


def test_fuzz_keystore_metadata_and_rows(rng, tmp_path) -> None:
    sample = Path(C.keystore_sample(tmp_path / "ks").url)
    _store_fuzz(sample, C.parse_keystore, ["zarr.json", "sealed/zarr.json"], rng, tmp_path,
                "keystore")
    row = (sample / "sealed" / "c" / "0" / "0").read_bytes()
    work = tmp_path / "rows"

    def parse_row(data: bytes) -> object:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(sample, work)
        (work / "sealed" / "c" / "0" / "0").write_bytes(data)
        return C.parse_keystore(work)

    assert _fuzz(parse_row, byte_mutations(row, rng, ROUNDS // 2), "keystore") == ROUNDS // 2


def test_fuzz_model_files(rng, tmp_path) -> None:
    torch.manual_seed(0)
    folder = Location(str(tmp_path / "model"))
    mid = ckpt.save_model(folder, SparseAutoencoder(PRESETS["tiny"]), {})
    data = Path(folder.url, ckpt.MODEL_FILE).read_bytes()
    head = data[:4096]
    ckpt.verify_model_bytes(data, "model", mid)  # the first build of a model pays torch's set-up
    n = PLAN["model-header"]
    _fuzz(lambda d: ckpt.verify_model_bytes(d + data[4096:], "model", mid),
          byte_mutations(head, rng, n // 3), "model-header")
    # The header as JSON: its structure and nesting, the tensor data kept.
    (size,) = struct.unpack_from("<Q", data)
    header, tail = json.loads(data[8 : 8 + size]), data[8 + size :]

    def with_header(raw: bytes) -> object:
        return ckpt.verify_model_bytes(struct.pack("<Q", len(raw)) + raw + tail, "model")

    _fuzz(with_header, json_mutations(header, rng, n // 3), "model-header")
    _fuzz(with_header, nested_mutations(header, rng, n - 2 * (n // 3)), "model-header")

    def with_config(raw: bytes) -> object:
        changed = {**header, "__metadata__": {**header["__metadata__"], "config": raw.decode(
            "utf-8", errors="replace")}}
        return with_header(json.dumps(changed).encode())

    config = header["__metadata__"]["config"].encode()
    _fuzz(with_config, all_json_mutations(config, rng, PLAN["model-config"]), "model-config")


def test_fuzz_lower_fidelity_keys(rng) -> None:
    from imambig.mechanism.grant_entries import decode_entries_keys, encode_entries_keys
    from imambig.mechanism.quantizer import quantize

    mask = np.zeros((1, 4, 64), bool)
    for row in range(4):
        mask[0, row, rng.choice(64, 8, replace=False)] = True
    (key,) = encode_entries_keys(mask, quantize(torch.randn(1, 4, 8)).numpy())
    assert _fuzz(lambda data: decode_entries_keys([data]), byte_mutations(key, rng),
                 "lower-fidelity-key") > ROUNDS // 2


@pytest.mark.parametrize("name,sample,parse", [
    ("current.json", C.pointer_sample, C.parse_pointer),
    ("lease", C.lease_sample, C.parse_lease),
    ("region-marker", C.marker_sample, C.parse_marker),
    ("release-record", C.release_record_sample, C.parse_release_record),
    ("manifest", C.manifest_sample, C.parse_manifest),
    ("evaluation", C.evaluation_sample, C.parse_evaluation),
])
def test_fuzz_small_json_documents(rng, name: str, sample: Callable[[], bytes],
                                   parse: Callable[[bytes], object]) -> None:
    parse(sample())  # the sample itself parses
    _fuzz(parse, all_json_mutations(sample(), rng, PLAN[name]), name)


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return out.getvalue()


_DESCRS = ["<f4", "<f8", ">f8", "<i8", "|b1", "|O", "<U16", "<U99999999", "V8", "<c16",
           "[('a', '<f4')]", "'<f4'", "", "None"]


def npy_header_mutations(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """A noise file with one member's .npy header changed: its shape (huge, empty,
    more or fewer axes), dtype, order, version or raw header bytes; the data kept,
    cut or extended."""
    members = _members(data)
    names = sorted(members)
    for _ in range(n):
        name = names[int(rng.integers(0, len(names)))]
        raw = members[name]
        (length,) = struct.unpack_from("<H", raw, 8)
        header, body = raw[10 : 10 + length], raw[10 + length :]
        kind = int(rng.integers(0, 6))
        if kind == 0:  # raw header bytes
            header = next(byte_mutations(header, rng, 1))
        else:
            shape = ast.literal_eval(header.decode("latin1"))["shape"]
            descr, order = "'<f4'", "False"
            choice = [(1 << 34,), (1 << 17, 1 << 17), (), (0,), (-1,), (*shape, 2),
                      shape[:-1], (2**63,), ((1, 2),), tuple(s + 1 for s in shape)]
            if kind == 1:
                shape = choice[int(rng.integers(0, len(choice)))]
            elif kind == 2:
                descr = _DESCRS[int(rng.integers(0, len(_DESCRS)))]
                descr = descr if descr.startswith(("[", "'", "N")) or not descr else repr(descr)
            elif kind == 3:
                order = str(rng.choice(["True", "1", "'x'"]))
            text = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape!r}, }}"
            if kind == 4:
                text = text.replace("}", "'extra': " + "[" * 300 + "]" * 300 + "}")
            header = (text + " " * (-(len(text) + 11) % 64) + "\n").encode("latin1")
        if kind == 5:
            body = body[: int(rng.integers(0, len(body) + 1))] + bytes(int(rng.integers(0, 9)))
        version = b"\x01\x00" if rng.random() < 0.9 else bytes([int(rng.integers(0, 4)), 0])
        new = b"\x93NUMPY" + version + struct.pack("<H", len(header)) + header + body
        yield _zip({**members, name: new})


def test_fuzz_noise_files(rng) -> None:
    data = C.noise_sample()
    C.parse_noise(data)
    n = PLAN["noise-file"]
    _fuzz(C.parse_noise, byte_mutations(data, rng, n // 2), "noise-file")
    _fuzz(C.parse_noise, npy_header_mutations(data, rng, n - n // 2), "noise-file")


def test_fuzz_reached_its_plan() -> None:
    """Run last: every parser got its planned inputs (when the whole module ran)."""
    ran = {k: MUTATIONS[k] for k in PLAN if MUTATIONS[k]}
    assert all(ran[k] >= PLAN[k] for k in ran), ran
    if len(ran) == len(PLAN):
        assert sum(ran.values()) >= 7_000
