"""Secret sources, the Secret wrapper, noise seeding and envelope encryption."""

from __future__ import annotations

import base64
import os
import pickle
import traceback
from pathlib import Path

import numpy as np
import pytest

from imambig.access.encryption import TamperedError
from imambig.access.key_provider import KeyProvider, LocalKeyProvider
from imambig.access.secrets import (
    InsecureSecretFileWarning,
    Secret,
    SecretError,
    Secrets,
    decoy_rng,
    decoy_seed,
    from_env,
    from_file,
    generate_secret_text,
    resolve_secret,
)
from imambig.config import SecretSources

RAW = bytes(range(100, 148))  # 48 bytes, recognisable in any output
RAW_B64 = base64.b64encode(RAW).decode()


def leaks(text: str) -> bool:
    return any(s in text for s in (RAW_B64, RAW.hex(), repr(RAW), str(list(RAW[:8]))))


def write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------
# Secret
# ---------------------------------------------------------------------------


def test_secret_hides_its_value() -> None:
    secret = Secret(RAW)
    for text in (repr(secret), str(secret), f"{secret}", repr([secret]), repr({"k": secret})):
        assert text.count("Secret(****)") >= 1
        assert not leaks(text)
    assert secret.reveal() == RAW
    assert len(secret) == len(RAW)
    assert secret == Secret(RAW) and secret != Secret(RAW[::-1])
    with pytest.raises(TypeError):
        hash(secret)


def test_secret_absent_from_tracebacks() -> None:
    def fail(secret: Secret) -> None:
        raise RuntimeError(f"could not use {secret}")

    with pytest.raises(RuntimeError) as info:
        fail(Secret(RAW))
    text = "".join(traceback.format_exception(info.value))
    assert "Secret(****)" in text and not leaks(text)


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def test_from_env_base64_and_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAMBIG_TEST_SECRET", RAW_B64)
    assert from_env("IMAMBIG_TEST_SECRET").reveal() == RAW
    urlsafe = base64.urlsafe_b64encode(RAW).decode().rstrip("=")
    monkeypatch.setenv("IMAMBIG_TEST_SECRET", urlsafe + "\n")
    assert from_env("IMAMBIG_TEST_SECRET").reveal() == RAW
    passphrase = "correct horse battery staple, forty bytes!"
    monkeypatch.setenv("IMAMBIG_TEST_SECRET", passphrase)
    assert from_env("IMAMBIG_TEST_SECRET").reveal() == passphrase.encode()


def test_missing_or_short_secret_names_the_source_not_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("IMAMBIG_TEST_SECRET", raising=False)
    with pytest.raises(SecretError, match="env:IMAMBIG_TEST_SECRET is not set"):
        resolve_secret("env:IMAMBIG_TEST_SECRET")
    short = base64.b64encode(RAW[:16]).decode()
    monkeypatch.setenv("IMAMBIG_TEST_SECRET", short)
    with pytest.raises(SecretError, match="env:IMAMBIG_TEST_SECRET is 16 bytes") as info:
        resolve_secret("env:IMAMBIG_TEST_SECRET")
    assert short not in str(info.value)
    with pytest.raises(SecretError, match=r"file:.*nope not found"):
        resolve_secret(f"file:{tmp_path / 'nope'}")
    with pytest.raises(SecretError, match="env:NAME, file:PATH"):
        resolve_secret("vault:whatever")
    with pytest.raises(SecretError, match="env:NAME, file:PATH"):
        resolve_secret("env:")


def test_from_file_base64_and_raw(tmp_path: Path) -> None:
    text = write_private(tmp_path / "owner.b64", RAW_B64.encode() + b"\n")
    assert resolve_secret(f"file:{text}").reveal() == RAW
    raw = write_private(tmp_path / "owner.bin", b"\x00\xff" + RAW)
    assert from_file(raw).reveal() == b"\x00\xff" + RAW


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_readable_secret_file_warns_or_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "owner"
    path.write_text(RAW_B64)
    path.chmod(0o644)
    with pytest.warns(InsecureSecretFileWarning, match="chmod 600"):
        assert from_file(path).reveal() == RAW
    with pytest.raises(SecretError, match="accessible to other users"):
        from_file(path, strict=True)


def test_secrets_resolve_once_and_do_not_travel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAMBIG_OWNER_SECRET", RAW_B64)
    assert Secrets().owner_secret.reveal() == RAW
    path = write_private(tmp_path / "s", base64.b64encode(RAW[::-1]))
    secrets = Secrets(SecretSources(owner_secret=f"file:{path}"))
    assert secrets.owner_secret.reveal() == RAW[::-1]
    # resolved once per run: a later change of the source is not seen by this run
    path.write_bytes(base64.b64encode(RAW))
    assert secrets.owner_secret.reveal() == RAW[::-1]
    assert "****" not in repr(secrets) and not leaks(repr(secrets))  # sources only
    with pytest.raises(TypeError, match="do not travel"):
        pickle.dumps(secrets)


def test_generated_secrets_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    text = generate_secret_text()
    assert text != generate_secret_text()
    monkeypatch.setenv("IMAMBIG_TEST_SECRET", text)
    assert len(from_env("IMAMBIG_TEST_SECRET")) == 32


# ---------------------------------------------------------------------------
# Noise seeding
# ---------------------------------------------------------------------------


def test_decoy_seed_is_deterministic_and_separates_inputs() -> None:
    secret = Secret(RAW)
    seed = decoy_seed(secret, "model-a")
    assert len(seed) == 32
    assert seed == decoy_seed(RAW, "model-a")
    others = {decoy_seed(RAW[::-1], "model-a"), decoy_seed(secret, "model-b")}
    assert seed not in others and len(others) == 2


def test_decoy_seed_is_the_documented_hmac() -> None:
    import hashlib
    import hmac

    expected = hmac.new(RAW, b"imambig/decoy-map/v1\0m", hashlib.sha256).digest()
    assert decoy_seed(RAW, "m") == expected


def test_decoy_rng_reproduces_streams() -> None:
    a = decoy_rng(RAW, "model-a").standard_normal(64)
    b = decoy_rng(Secret(RAW), "model-a").standard_normal(64)
    c = decoy_rng(RAW, "model-b").standard_normal(64)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_decoy_seed_validation() -> None:
    with pytest.raises(SecretError, match="at least 32"):
        decoy_seed(b"short", "m")
    with pytest.raises(ValueError, match="NUL"):
        decoy_seed(RAW, "m\0x")


# ---------------------------------------------------------------------------
# Envelope encryption
# ---------------------------------------------------------------------------


def test_local_provider_wraps_and_unwraps() -> None:
    provider = LocalKeyProvider(Secret(RAW))
    assert isinstance(provider, KeyProvider)
    data_key = provider.data_key("store-1")
    assert len(data_key) == 32
    assert data_key == provider.data_key("store-1") != provider.data_key("store-2")
    blob = provider.wrap(data_key)
    assert data_key not in blob
    assert blob == provider.wrap(data_key)  # deterministic: stores rebuild byte for byte
    assert provider.unwrap(blob) == data_key
    assert LocalKeyProvider(RAW).unwrap(blob) == data_key


def test_local_provider_rejects_other_master_and_tampering() -> None:
    provider = LocalKeyProvider(RAW)
    blob = provider.wrap(provider.data_key("store-1"))
    with pytest.raises(TamperedError, match="another master key"):
        LocalKeyProvider(RAW[::-1]).unwrap(blob)
    for position in range(len(blob)):
        bad = bytearray(blob)
        bad[position] ^= 0x80
        with pytest.raises(TamperedError):
            provider.unwrap(bytes(bad))


def test_local_provider_hides_master(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAMBIG_KEYSTORE_KEY", RAW_B64)
    provider = LocalKeyProvider.from_secrets(Secrets())
    assert provider.unwrap(provider.wrap(bytes(32))) == bytes(32)
    assert not leaks(repr(provider)) and provider.fingerprint in repr(provider)
    assert not leaks(repr(vars(provider) if hasattr(provider, "__dict__") else provider))
    with pytest.raises(SecretError, match="at least 32"):
        LocalKeyProvider(b"too short")
