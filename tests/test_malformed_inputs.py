"""The malformed-input corpus (issue #12, item 9): grants, keys, keystore rows and
attributes, identity files and public stores, each truncated, bit-flipped, oversized,
of a wrong version or with crafted Zarr metadata, and the specific error each gets."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imambig.access.grant import LEGACY_MAGIC, MAGIC, MAX_GRANT_BYTES, GrantError, seal_grant
from imambig.access.identity import IdentityError, new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.errors import KeyFormatError, StoreFormatError, TamperedError
from imambig.stores.location import Location
from tests import corpus as C

KEY = C.key_sample()
GRANT = C.sealed_grant_sample()
IDENTITY_FILE = C.identity_file_sample()


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x10
    return bytes(out)


KEY_CASES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "shorter than its 7-byte header"),
    "truncated header": (KEY[:3], "shorter than its 7-byte header"),
    "truncated payload": (KEY[:-1], "expected 653"),
    "extended": (KEY + b"\0", "expected 653"),
    "oversized": (KEY + bytes(1 << 17), "over the 65536-byte payload limit"),
    "wrong version": (b"\x09" + KEY[1:], "unsupported key format version 9"),
    "k' zero": (KEY[:1] + b"\0\0" + KEY[3:], "bad key header: k'=0"),
    "k_sel above k'": (KEY[:3] + struct.pack(">H", 300) + KEY[5:], "k_sel=300"),
    "huge L": (KEY[:5] + struct.pack(">H", 65535) + KEY[7:], "L=65535 must be in 1..4096"),
    "flipped L": (_flip(KEY, 6), "expected about"),
    "rank out of range": (KEY[:7] + b"\xff" * (len(KEY) - 7), "rank out of range"),
}


@pytest.mark.parametrize("case", KEY_CASES)
def test_malformed_keys(case: str) -> None:
    data, message = KEY_CASES[case]
    with pytest.raises(KeyFormatError, match=message):
        C.parse_key(data)


def _forged() -> bytes:
    return seal_grant(C.grant_sample(), Ed25519PrivateKey.generate(), C.IDENTITY.public_text())


GRANT_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "truncated"),
    "truncated magic": (lambda: GRANT[:5], "truncated"),
    "truncated header": (lambda: GRANT[: len(MAGIC) + 40], "truncated"),
    "truncated ciphertext": (lambda: GRANT[:-1], "failed authentication"),
    "flipped ciphertext": (lambda: _flip(GRANT, len(GRANT) // 2), "failed authentication"),
    "flipped tag": (lambda: _flip(GRANT, len(GRANT) - 1), "failed authentication"),
    "oversized": (lambda: GRANT + bytes(MAX_GRANT_BYTES), "over the"),
    "format 1": (lambda: LEGACY_MAGIC + GRANT[len(MAGIC) :], "format 1"),
    "foreign file": (lambda: b"PK\x03\x04" + GRANT[4:], "not an imambig grant"),
    "for another identity": (
        lambda: seal_grant(C.grant_sample(), C.OWNER, new_identity().public_text()),
        "sealed for another identity"),
    "forged by a stranger": (_forged, "not signed by the owner key you pinned"),
    "expired": (lambda: C.sealed_grant_sample(expires_at="2029-06-01T00:00:00+00:00"),
                "expired at 2029-06-01"),
}


@pytest.mark.parametrize("case", GRANT_CASES)
def test_malformed_grants(case: str) -> None:
    build, message = GRANT_CASES[case]
    with pytest.raises(GrantError, match=message):
        C.parse_grant(build())


BODY = C.grant_sample().to_bytes()
BODY_CASES: dict[str, tuple[bytes, str]] = {
    "not json": (BODY[:-1], "not valid JSON"),
    "not utf-8": (b"\xff" + BODY, "not valid JSON"),
    "wrong format": (BODY.replace(b"imambig-grant/2", b"imambig-grant/9"), "format"),
    "no items": (BODY.replace(b'"items":[', b'"items":[],"x":['), "not valid JSON|items"),
    "bad position": (BODY.replace(b'"index":0', b'"index":-1'), "position"),
    "bad model id": (BODY.replace(C.MODEL_ID.encode(), b"../../etc"), "model_id"),
    "duplicate item": (BODY.replace(b"000001.jpg", b"000000.jpg"), "each item once"),
    "oversized name": (BODY.replace(b"000001.jpg", b"n" * 5000), "name"),
}


@pytest.mark.parametrize("case", BODY_CASES)
def test_malformed_grant_bodies(case: str) -> None:
    data, message = BODY_CASES[case]
    with pytest.raises(GrantError, match=message):
        C.parse_grant_body(data)


_PRIVATE = IDENTITY_FILE.splitlines()[-1]
IDENTITY_CASES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "exactly one private key line, found 0"),
    "truncated key": (IDENTITY_FILE[:-20], "must encode 32 bytes"),
    "flipped character": (IDENTITY_FILE.replace(_PRIVATE, _PRIVATE[:-3] + b"!" + _PRIVATE[-2:]),
                          "not valid base64"),
    "wrong version": (IDENTITY_FILE.replace(b"secret-v1", b"secret-v2"),
                      "not an imambig private key"),
    "public key instead": (IDENTITY_FILE.replace(_PRIVATE, C.IDENTITY.public_text().encode()),
                           "not an imambig private key"),
    "two keys": (IDENTITY_FILE + _PRIVATE + b"\n", "found 2"),
    "oversized": (IDENTITY_FILE + b"#" * (1 << 17), "over 65536 bytes"),
    "binary": (bytes(range(256)) * 4, "exactly one private key line|not an imambig"),
}


@pytest.mark.parametrize("case", IDENTITY_CASES)
def test_malformed_identity_files(case: str, tmp_path: Path) -> None:
    data, message = IDENTITY_CASES[case]
    with pytest.raises(IdentityError, match=message):
        C.parse_identity_file(data, tmp_path)


# -- keystores ----------------------------------------------------------------------------


def _sealed_row(store: Path, row: int, change: Callable[[np.ndarray], np.ndarray]) -> None:
    ks = Keystore.open(Location(str(store)), C.PROVIDER, mode="r+")
    ks.sealed[row] = change(np.asarray(ks.sealed[row]))


def _swap_rows(store: Path) -> None:
    ks = Keystore.open(Location(str(store)), C.PROVIDER, mode="r+")
    a, b = np.asarray(ks.sealed[0]), np.asarray(ks.sealed[1])
    ks.sealed[0], ks.sealed[1] = b, a


def _flip_row(row: np.ndarray) -> np.ndarray:
    row[40] ^= 1
    return row


KEYSTORE_CASES: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "flipped row byte": (lambda s: _sealed_row(s, 1, _flip_row), TamperedError,
                         "keystore chunk 1 .* failed authentication"),
    "zeroed row tail": (lambda s: _sealed_row(s, 0, lambda r: np.where(
        np.arange(len(r)) > len(r) // 2, 0, r).astype(np.uint8)), TamperedError,
        "keystore chunk 0"),
    "row never written": (lambda s: _sealed_row(s, 1, np.zeros_like), StoreFormatError,
                          "never written"),
    "swapped rows": (_swap_rows, TamperedError, "keystore chunk 0"),
    "truncated chunk file": (
        lambda s: (s / "sealed" / "c" / "1" / "0").write_bytes(
            (s / "sealed" / "c" / "1" / "0").read_bytes()[:10]), StoreFormatError,
        "row 1 unreadable"),
    "n_items changed": (lambda s: C.edit_attributes(s, lambda a: a.update(n_items=3)),
                        TamperedError, "attributes failed authentication"),
    "chunk_items changed": (lambda s: C.edit_attributes(s, lambda a: a.update(chunk_items=2)),
                            TamperedError, "attributes failed authentication"),
    "mac removed": (lambda s: C.edit_attributes(s, lambda a: a.pop("attrs_mac")),
                    TamperedError, "attributes failed authentication"),
    "wrapped key garbage": (
        lambda s: C.edit_attributes(s, lambda a: a.update(wrapped_data_key="!!")),
        StoreFormatError, "wrapped data key"),
    "wrapped key of another master": (
        lambda s: C.edit_attributes(s, lambda a: a.update(wrapped_data_key=base64.b64encode(
            LocalKeyProvider(bytes(32)).wrap(bytes(32))).decode())),
        TamperedError, "another master key"),
    "version 1 layout": (
        lambda s: C.edit_attributes(s, lambda a: a.update(schema="imambig.keystore/1")),
        StoreFormatError, "earlier version"),
    "foreign codec": (
        lambda s: C.edit_json(s / "sealed" / "zarr.json", lambda d: d["codecs"].append(
            {"name": "numcodecs.pickle", "configuration": {}})),
        StoreFormatError, r"codecs|numcodecs\.pickle"),
    "not json": (lambda s: (s / "zarr.json").write_bytes(b"{not json"), StoreFormatError,
                 "not a readable keystore"),
}


@pytest.mark.parametrize("case", KEYSTORE_CASES)
def test_malformed_keystores(case: str, tmp_path: Path) -> None:
    tamper, error, message = KEYSTORE_CASES[case]
    store = Path(C.keystore_sample(tmp_path / "ks").url)
    assert C.parse_keystore(store)
    tamper(store)
    with pytest.raises(error, match=message):
        C.parse_keystore(store)


# -- public stores ------------------------------------------------------------------------

PUBLIC_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "pickle codec": (lambda s: C.edit_array_metadata(s, "values", lambda d: d["codecs"].append(
        {"name": "numcodecs.pickle", "configuration": {}})), "codecs"),
    "unknown codec": (lambda s: C.edit_array_metadata(s, "support", lambda d: d.update(
        codecs=[{"name": "bytes"}, {"name": "mystery"}])), "not a readable|codecs"),
    "absurd item count": (lambda s: C.edit_attributes(s, lambda a: a.update(n_items=1 << 40)),
                          "n_items"),
    "absurd maps": (lambda s: C.edit_attributes(s, lambda a: a.update(n_maps=10**9)), "n_maps"),
    "k' above m": (lambda s: C.edit_attributes(s, lambda a: a.update(k_public=99)), "k_public"),
    "m not bytes": (lambda s: C.edit_attributes(s, lambda a: a.update(code_length=15)),
                    "multiple of 8"),
    "string sizes": (lambda s: C.edit_attributes(s, lambda a: a.update(n_items="6")), "n_items"),
    "shape mismatch": (lambda s: C.edit_array_metadata(s, "values", lambda d: d.update(
        shape=[6, 2, 5])), "has shape"),
    "huge shape": (lambda s: C.edit_array_metadata(s, "item_id", lambda d: d.update(
        shape=[1 << 50])), "has shape"),
    "wrong dtype": (lambda s: C.edit_array_metadata(s, "values", lambda d: d.update(
        data_type="float32", fill_value=0.0)), "data type float32"),
    "other chunks": (lambda s: C.edit_array_metadata(s, "support", lambda d: d[
        "chunk_grid"]["configuration"].update(chunk_shape=[1, 2, 2])), "chunks"),
    "storage transformer": (lambda s: C.edit_array_metadata(s, "values", lambda d: d.update(
        storage_transformers=[{"name": "x"}])), "not a readable|storage transformers"),
    "version 1 layout": (lambda s: C.edit_attributes(s, lambda a: a.update(
        schema="imambig.public-store/1")), "earlier version"),
    "foreign schema": (lambda s: C.edit_attributes(s, lambda a: a.update(schema="x")),
                       "not a public store"),
    "not json": (lambda s: (s / "zarr.json").write_bytes(b"\x00\xff"), "not a readable"),
    "truncated chunk": (lambda s: (s / "values" / "c" / "1" / "0" / "0").write_bytes(
        (s / "values" / "c" / "1" / "0" / "0").read_bytes()[:9]), "records unreadable"),
    "missing array": (lambda s: C.edit_json(s / "zarr.json", lambda d: d[
        "consolidated_metadata"]["metadata"].pop("values")), "missing or unreadable"),
}


@pytest.mark.parametrize("case", PUBLIC_CASES)
def test_malformed_public_stores(case: str, tmp_path: Path) -> None:
    tamper, message = PUBLIC_CASES[case]
    store = Path(C.public_store_sample(tmp_path / "pub").url)
    C.parse_public_store(store)
    tamper(store)
    with pytest.raises(StoreFormatError, match=message):
        C.parse_public_store(store)
