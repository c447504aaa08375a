"""Hostile files where imambig reads a stranger's bytes: each refused with the project's
own exception (or, where the reader skips what it cannot read, read as nothing), at most
twice the peak memory of an honest read of the same kind and in under 5 s.

Every case runs in a fresh interpreter (``tests.bounded_case``) beside an honest read of
its kind. Before these readers were bounded, each case let out a foreign exception
(``RecursionError``, ``ZeroDivisionError``, ``TypeError``, ``KeyError``, ``IndexError``,
``BadZipFile``, ``MemoryError``), joined a path outside its root, or read a file whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import pytest
import safetensors.torch
import torch

from imambig.access.keystore import Keystore, Slot
from imambig.config import PRESETS
from imambig.mechanism.keys import encode_key
from imambig.mechanism.noise_model import fit_noise_model
from imambig.model import checkpoint as ckpt
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stages.encode.plan import RegionManifest
from imambig.stages.publish import MANIFEST
from imambig.stages.versions import CURRENT
from imambig.stores.location import Location
from tests import corpus as C
from tests.bounded_case import Cost, assert_refused_cheaply, measure

DEEP = 200_000  # nesting of the deep-JSON cases
SPARSE = 512 << 20  # size of the oversized files (sparse: no disk is used)
VERSION = "v-0123456789abcdef-k32-d4"

_honest: dict[str, Cost] = {}


def _check(kind: str, imports: str, case: str, honest: dict, hostile: dict,
           error: str | None) -> Cost:
    """Measure ``case`` on the honest values (once per ``kind``) and on the hostile
    ones; assert the hostile read was refused cheaply. Returns the hostile cost."""
    if kind not in _honest:
        _honest[kind] = measure(case, imports=imports, values=honest)
    cost = measure(case, imports=imports, values=hostile)
    print(f"\n{kind}: hostile {cost}; honest {_honest[kind]}")  # the numbers, with -s
    assert_refused_cheaply(cost, _honest[kind], error)
    return cost


def _deep(prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    return prefix + b"[" * DEEP + b"]" * DEEP + suffix


def _sparse(path: Path) -> str:
    with open(path, "wb") as f:
        f.truncate(SPARSE)
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


# ---------------------------------------------------------------------------
# Model files: header and config
# ---------------------------------------------------------------------------

MODEL_IMPORTS = """
from imambig.model.checkpoint import load_model
from imambig.stores.location import Location
"""
MODEL_CASE = "load_model(Location(path))"


@pytest.fixture(scope="module")
def model_file(folder: Path) -> Path:
    torch.manual_seed(0)
    where = folder / "model"
    ckpt.save_model(Location(str(where)), SparseAutoencoder(PRESETS["tiny"]), {})
    return where / ckpt.MODEL_FILE


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict | bytes, tail: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + tail


def _with_config(data: bytes, change: dict) -> bytes:
    """The model file with its config changed and its model id recomputed, as anyone
    can: only the config's own checks can refuse it."""
    header, tail = _split(data)
    meta = header["__metadata__"]
    config = {**json.loads(meta["config"]), **change}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    tensors = safetensors.torch.load(data)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        ckpt._hash_tensor(h, name, t.dtype, tuple(t.shape),
                          t.reshape(-1).view(torch.uint8).numpy().tobytes())
    meta["config"], meta["model_id"] = json.dumps(config, sort_keys=True), h.hexdigest()[:16]
    return _join(header, tail)


def _model_case(model_file: Path, name: str, data: bytes) -> Cost:
    hostile = model_file.parent.parent / name / ckpt.MODEL_FILE
    hostile.parent.mkdir(exist_ok=True)
    hostile.write_bytes(data)
    return _check("model", MODEL_IMPORTS, MODEL_CASE, {"path": str(model_file.parent)},
                  {"path": str(hostile.parent)}, "ModelFormatError")


def test_model_header_nested_deep(model_file: Path) -> None:
    _, tail = _split(model_file.read_bytes())
    _model_case(model_file, "deep-header", _join(_deep(b'{"x":', b"}"), tail))


def test_model_config_nested_deep(model_file: Path) -> None:
    header, tail = _split(model_file.read_bytes())
    header["__metadata__"]["config"] = _deep().decode()
    _model_case(model_file, "deep-config", _join(header, tail))


@pytest.mark.parametrize("change", [
    {"groups": 0}, {"groups": -1}, {"filters": [5 << 40] * 6}, {"code_length": 1 << 40},
    {"filters": [10, 10, 10, 10, 10, 7]}, {"k": 1.5}, {"negative_slope": float("nan")},
    {"filters": "abcdef"}, {"image_height": -32}, {"n_maps": True}, {"scales": None},
], ids=lambda c: ",".join(f"{k}={str(v)[:12]}" for k, v in c.items()))
def test_model_config_nonsense(model_file: Path, change: dict) -> None:
    name = "config-" + hashlib.sha256(repr(change).encode()).hexdigest()[:8]
    _model_case(model_file, name, _with_config(model_file.read_bytes(), change))


# ---------------------------------------------------------------------------
# current.json
# ---------------------------------------------------------------------------

POINTER_IMPORTS = """
from imambig.stages.versions import current_version, list_versions, set_current
from imambig.stores.location import Location
"""
POINTER_CASE = """
root = Location(path)
if use == "current_version":
    result = current_version(root).url
elif use == "set_current":
    set_current(root, version, 1)
else:
    result = list_versions(root, Location(keys))
"""


@pytest.mark.parametrize("content,use", [
    (_deep(), "current_version"),
    (b'{"version": 5}', "current_version"),
    (b"[]", "current_version"),
    (b"{}", "current_version"),
    (b'{"version": "../keys/' + VERSION.encode() + b'"}', "current_version"),
    (b'{"version": "' + VERSION.encode() + b'\\n"}', "current_version"),
    (b'{"version": "' + VERSION.encode() + b'", "superseded": "x"}', "set_current"),
    (b'{"version": "' + VERSION.encode() + b'", "superseded": [1]}', "list_versions"),
    (_deep(b'{"version": "' + VERSION.encode() + b'", "x": ', b"}"), "list_versions"),
], ids=["deep", "version-int", "list", "empty", "traversal", "newline", "superseded-str",
        "superseded-list", "deep-field"])
def test_current_json_malformed(folder: Path, content: bytes, use: str) -> None:
    honest, hostile = folder / "pointer-honest", folder / f"pointer-{use}-{len(content)}"
    for where, data in ((honest, json.dumps({"version": VERSION, "n_items": 3}).encode()),
                        (hostile, content)):
        where.mkdir(exist_ok=True)
        (where / CURRENT).write_bytes(data)
    common = {"use": use, "version": VERSION, "keys": str(folder / "no-keys")}
    _check("pointer", POINTER_IMPORTS, POINTER_CASE,
           {**common, "path": str(honest), "use": "current_version"},
           {**common, "path": str(hostile)}, "StoreFormatError")


# ---------------------------------------------------------------------------
# The keystore: an item past its last slot
# ---------------------------------------------------------------------------

KEYSTORE_IMPORTS = """
from imambig.access.keystore import Keystore
from imambig.stores.location import Location
from tests.corpus import PROVIDER
"""
KEYSTORE_CASE = """
ks = Keystore.open(Location(path), PROVIDER)
if rows is None:
    result = [s.item_id for s in ks.entries(positions)]
else:
    result = [len(ks.read_row(r)) for r in rows]
"""


@pytest.fixture(scope="module")
def keystore(folder: Path) -> str:
    """5 items in rows of 3: the last row has 2 slots."""
    where = Location(str(folder / "keystore"))
    key_len = len(encode_key(np.eye(C.MAPS, C.KP, dtype=bool)))
    ks = Keystore.create(where, public_store_id=C.STORE_ID, version=VERSION,
                         model_id=C.MODEL_ID, n_items=5, chunk_items=3, n_maps=C.MAPS, k=1,
                         k_public=C.KP, key_bytes=key_len, provider=C.PROVIDER)
    key = encode_key(np.eye(C.MAPS, C.KP, dtype=bool))
    for row, items in ((0, range(3)), (1, range(3, 5))):
        ks.write_row(row, [Slot(f"{i:032x}", bytes(32), key) for i in items])
    ks.finish()
    return where.url


@pytest.mark.parametrize("positions,rows", [([5], None), ([4, 5], None), ([-1], None),
                                            ([1 << 40], None), (None, [-1]), (None, [2])],
                         ids=["past-last-slot", "after-a-good-one", "negative", "huge",
                              "row-negative", "row-past-end"])
def test_keystore_item_past_the_last_slot(keystore: str, positions, rows) -> None:
    _check("keystore", KEYSTORE_IMPORTS, KEYSTORE_CASE,
           {"path": keystore, "positions": [0, 4], "rows": None},
           {"path": keystore, "positions": positions, "rows": rows}, "StoreFormatError")


# ---------------------------------------------------------------------------
# Noise files
# ---------------------------------------------------------------------------

NOISE_IMPORTS = """
from imambig.config import PRESETS
from imambig.mechanism.noise_model import NoiseModel
from imambig.stores.location import Location
"""
NOISE_CASE = """
extra = [PRESETS["tiny"]] if with_config else []
result = NoiseModel.load(Location(path), *extra).k_public
"""


@pytest.fixture(scope="module")
def noise_file(folder: Path) -> bytes:
    torch.manual_seed(0)
    model = SparseAutoencoder(PRESETS["tiny"])
    noise = fit_noise_model(model, C.MODEL_ID, [torch.rand(48, 3, 32, 32)], 32)
    return noise.to_bytes()


def _rezip(data: bytes, replace: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, replace.get(info.filename, src.read(info.filename)))
    return out.getvalue()


def _claim(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy member whose header claims ``shape`` and holds 64 bytes."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                            "shape": shape})
    return buf.getvalue() + bytes(64)


def _noise_variants(data: bytes) -> dict[str, bytes]:
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as z:  # a directory of 20,000 entries
        for i in range(20_000):
            z.writestr(f"{i}.npy", b"")
    flipped = bytearray(data)
    flipped[len(flipped) // 3] ^= 0xFF
    return {
        "truncated": data[: len(data) // 2],
        "truncated-tail": data[:-10],
        "2^34-floats": _rezip(data, {"components.npy": _claim((1 << 17, 1 << 17))}),
        "2^34-dense": _rezip(data, {"dense_quantiles.npy": _claim((1 << 10, 1 << 10, 1 << 14))}),
        "object-dtype": _rezip(data, {"mean.npy": _claim((128,), "|O")}),
        "byte-flipped": bytes(flipped),
        "many-entries": many.getvalue(),
        "empty": b"",
    }


@pytest.mark.parametrize("with_config", [False, True], ids=["bare", "config"])
@pytest.mark.parametrize("variant", ["truncated", "truncated-tail", "2^34-floats",
                                     "2^34-dense", "object-dtype", "byte-flipped",
                                     "many-entries", "empty"])
def test_noise_file_hostile(folder: Path, noise_file: bytes, variant: str,
                            with_config: bool) -> None:
    honest = folder / "noise-honest.npz"
    honest.write_bytes(noise_file)
    hostile = folder / f"noise-{variant.replace('^', '')}.npz"
    hostile.write_bytes(_noise_variants(noise_file)[variant])
    _check("noise", NOISE_IMPORTS, NOISE_CASE, {"path": str(honest), "with_config": False},
           {"path": str(hostile), "with_config": with_config}, "FormatError")


# ---------------------------------------------------------------------------
# Leases, region markers, release records, manifests, evaluations, image stores
# ---------------------------------------------------------------------------

LEASE_IMPORTS = """
from imambig.stores.lease import Lease
from imambig.stores.location import Location
"""


@pytest.mark.parametrize("variant", ["deep", "oversized", "bad-times"])
def test_lease_file_hostile(folder: Path, variant: str) -> None:
    """A lease that does not parse is an expired one (no run wrote it): read as such,
    whatever it holds."""
    honest, hostile = folder / "lease-honest.json", folder / f"lease-{variant}.json"
    honest.write_text(json.dumps({"owner": "run", "acquired": 1e9, "expires": 2e9}))
    if variant == "deep":
        hostile.write_bytes(_deep(b'{"expires": 1, "x": ', b"}"))
    elif variant == "oversized":
        _sparse(hostile)
    else:
        hostile.write_text('{"owner": "x", "acquired": 1e308, "expires": 1e308, "pid": 1e300}')
    cost = _check("lease", LEASE_IMPORTS, "result = Lease(Location(path)).holder()",
                  {"path": str(honest)}, {"path": str(hostile)}, None)
    assert "unreadable" in cost.result


MARKER_IMPORTS = """
from imambig.stages.encode.regions import read_marker
from imambig.stores.location import Location
"""


@pytest.mark.parametrize("content", [
    _deep(), b'{"start": "0"}', b"[1]", b'{"start": 0, "stop": 3, "items": 3, '
    b'"public_sha256": "x", "seconds": 1, "extra": 1}', b'{"start": 0, "stop": 3, "items": '
    b'3, "public_sha256": "x", "seconds": NaN}'], ids=["deep", "types", "list", "extra", "nan"])
def test_region_marker_hostile(folder: Path, content: bytes) -> None:
    honest, hostile = folder / "marker-honest.json", folder / f"marker-{len(content)}.json"
    honest.write_text(json.dumps(RegionManifest(0, 3, 3, "ab" * 32, 1.0, 2.0, 3.0).to_dict()))
    hostile.write_bytes(content)
    _check("marker", MARKER_IMPORTS, "result = read_marker(Location(path))",
           {"path": str(honest)}, {"path": str(hostile)}, "StoreFormatError")


def test_release_record_nested_deep(folder: Path) -> None:
    honest, hostile = folder / "release-honest.json", folder / "release-deep.json"
    honest.write_text(json.dumps({
        "model_id": C.MODEL_ID, "k_public": 32, "noise_design": 4, "noise_fit_sha256": "0" * 64,
        "value_bits": 3, "precision": "fp32", "owner_fingerprint": "0" * 16}))
    hostile.write_bytes(_deep())
    _check("release", "from imambig.stages.encode.release_binding import Mechanism",
           "result = Mechanism.from_json(open(path, 'rb').read(), path)",
           {"path": str(honest)}, {"path": str(hostile)}, "ReleaseRefused")


@pytest.mark.parametrize("variant", ["deep", "traversal", "no-objects"])
def test_publication_manifest_hostile(folder: Path, variant: str) -> None:
    honest, hostile = folder / "pub-honest", folder / f"pub-{variant}"
    for where in (honest, hostile):
        where.mkdir(exist_ok=True)
        (where / "zarr.json").write_bytes(b"{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    (honest / MANIFEST).write_text(json.dumps(
        {"objects": [{"path": "zarr.json", "bytes": 2, "sha256": digest}]}))
    (folder / "secret").write_bytes(b"{}")
    (hostile / MANIFEST).write_bytes({
        "deep": _deep(b'{"objects": ', b"}"),
        "traversal": json.dumps({"objects": [{"path": "../secret", "bytes": 2,
                                              "sha256": digest}]}).encode(),
        "no-objects": b'{"objects": {"path": 1}}'}[variant])
    cost = _check("manifest", "from imambig.stages.publish import verify_publication\n"
                  "from imambig.stores.location import Location",
                  "result = verify_publication(Location(path))",
                  {"path": str(honest)}, {"path": str(hostile)}, "StoreFormatError")
    assert "secret" not in cost.message


def test_evaluation_nested_deep() -> None:
    honest = json.dumps({"rows": [], "rates": {}, "n_items": 0, "split": "test",
                         "model_id": C.MODEL_ID})
    _check("evaluation", "from imambig.study.evaluate import load_evaluation",
           "result = load_evaluation(text)", {"text": honest}, {"text": _deep().decode()},
           "FormatError")


def test_image_store_metadata_nested_deep(folder: Path) -> None:
    """What is at an ingest target is only looked at: unreadable means foreign."""
    honest, hostile = folder / "images-honest", folder / "images-deep"
    for where, data in ((honest, b'{"attributes": {}}'), (hostile, _deep())):
        where.mkdir(exist_ok=True)
        (where / "zarr.json").write_bytes(data)
    cost = _check("image-store", "from imambig.stores.image_store import store_state\n"
                  "from imambig.stores.location import Location",
                  "result = store_state(Location(path))",
                  {"path": str(honest)}, {"path": str(hostile)}, None)
    assert cost.result == "'foreign'"


# ---------------------------------------------------------------------------
# Grants and key files
# ---------------------------------------------------------------------------


def test_reveal_reads_a_grant_only_to_its_limit(folder: Path) -> None:
    """``imambig reveal`` on a file whose size says nothing (a device that never ends):
    refused after the limit + 1 byte, at the cost of an honest read of a grant that size."""
    from imambig.access.grant import MAX_GRANT_BYTES

    largest = folder / "grant-largest"
    with open(largest, "wb") as f:
        f.write(os.urandom(1 << 20) * (MAX_GRANT_BYTES >> 20))
    identity = folder / "identity"
    identity.write_bytes(C.identity_file_sample())
    os.chmod(identity, 0o600)
    args = ["reveal", "--grant", "/dev/zero", "--identity", str(identity),
            "--owner", C.OWNER_PUBLIC, "--model", str(folder / "none"),
            "--out", str(folder / "out")]
    honest = measure("result = len(open(path, 'rb').read())", values={"path": str(largest)})
    # The parser is built and what reveal imports is imported first: only the handler's
    # reading of the grant is measured.
    hostile = measure("a.handler(a)", values={"args": args},
                      imports="from imambig.cli import build_parser\n"
                              "import imambig.stages.share, imambig.access.identity\n"
                              "a = build_parser().parse_args(args)")
    print(f"\ngrant file: hostile {hostile}; honest {honest}")
    assert_refused_cheaply(hostile, honest, "GrantError")


def test_grant_body_nested_deep() -> None:
    _check("grant-body", "from imambig.access.grant import Grant",
           "result = Grant.from_bytes(data.encode())",
           {"data": C.grant_sample().to_bytes().decode()}, {"data": _deep().decode()},
           "GrantError")


@pytest.mark.parametrize("reader,error", [
    ("owner_key", "OwnerKeyError"), ("secret", "SecretError"), ("identity", "IdentityError")])
def test_key_files_are_read_to_their_limit(folder: Path, reader: str, error: str) -> None:
    honest = folder / f"{reader}-honest"
    honest.write_bytes({"owner_key": C.OWNER_PUBLIC.encode(),
                        "secret": b"c2Vjb25kIG93bmVyIG9mIHRoaXMgbW9kZWwgZm9sZGVy\n",
                        "identity": C.identity_file_sample()}[reader])
    os.chmod(honest, 0o600)
    hostile = _sparse(folder / f"{reader}-huge")
    imports = {"owner_key": "from imambig.access.owner_key import parse_owner_key as read",
               "secret": "from imambig.access.secrets import from_file as read",
               "identity": "from imambig.access.identity import load_identity as read"}[reader]
    _check(reader, imports, "result = read(path) is not None", {"path": str(honest)},
           {"path": hostile}, error)
