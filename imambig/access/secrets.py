"""The owner's secrets: where they come from, how they travel, and the one use of the
owner secret's bytes (the seeds of the decoy map and of the seals).

Secrets never live in code, configs or stores. A *spec* names where one is found:
``env:NAME`` (an environment variable), ``file:PATH`` (a file) or ``<scheme>:NAME`` for
a scheme registered by an orchestrator (e.g. ``prefect:BLOCK``). Either holds the
secret as base64 text (e.g. ``openssl rand -base64 32``; what
:func:`generate_secret_text` prints) or, for files, as raw bytes; at least 32 bytes
either way. ``SecretSources`` (``imambig.config``) holds one spec per secret.

Three secrets exist:

- the owner secret seeds the owner's decoy map of each model (:func:`decoy_seed`,
  ``imambig.mechanism.decoy_map``): the same image, model and secret always give the
  same fakes, so re-releases cannot be diffed, and keys the seals of its records
  (:func:`seal_key`, ``imambig.mechanism.seal``);
- the keystore key protects the keystore through envelope encryption
  (``imambig.access.key_provider``): each store has its own data key, kept only in
  wrapped form;
- the signing key signs grants (``imambig.access.owner_key``); users pin its public key.

A run resolves its sources once (:class:`Secrets`) and hands the values on as
:class:`Secret`, whose repr and str never show them; the bytes come out only in the
HMAC or HKDF call that needs them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads with the generators: --help stays quick
    import numpy as np

from imambig.config import KEYSTORE_KEY_ENV, OWNER_SECRET_ENV, SIGNING_KEY_ENV, SecretSources
from imambig.errors import FormatError, ImambigError
from imambig.untrusted import read_file

MIN_SECRET_BYTES = 32
MAX_SECRET_FILE_BYTES = 64 << 10  # secrets are 32+ bytes; a key file is never this large
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/_-]+={0,2}")


class Secret:
    """Bytes that never show up in reprs, str(), f-strings or tracebacks' locals."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def fingerprint(self, purpose: str) -> str:
        """HMAC-SHA256(secret, ``purpose``), 16 hex digits: tells two secrets apart
        (e.g. in a store id) and reveals nothing usable about either."""
        return hmac.new(self._value, purpose.encode(), hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]  # a hash would be a (weak) fingerprint


class SecretError(ImambigError):
    """A secret is missing, unreadable or too short; the message names where, not what."""


class InsecureSecretFileWarning(UserWarning):
    """A secret file can be read by other users."""


def reveal(secret: Secret | bytes) -> bytes:
    return secret.reveal() if isinstance(secret, Secret) else bytes(secret)


def generate_secret_text(n_bytes: int = 32) -> str:
    """A fresh random secret as base64 text, ready for an env var or a secret file."""
    return base64.b64encode(secrets.token_bytes(n_bytes)).decode("ascii")


def _decode(raw: bytes) -> bytes:
    """Base64 text (standard or URL-safe, padding optional) if it looks like it, else
    the bytes as they are."""
    text = raw.strip()
    if _BASE64_TEXT.fullmatch(text):
        text = text.rstrip(b"=").replace(b"-", b"+").replace(b"_", b"/")
        try:
            return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
        except binascii.Error:
            pass
    return raw


def _checked(value: bytes, spec: str, min_bytes: int) -> Secret:
    if len(value) < min_bytes:
        raise SecretError(
            f"secret {spec} is {len(value)} bytes; at least {min_bytes} are required "
            "(generate one with `openssl rand -base64 32`)"
        )
    return Secret(value)


def from_env(var: str, *, min_bytes: int = MIN_SECRET_BYTES) -> Secret:
    """The secret in environment variable ``var`` (or withheld from it, see
    :func:`withhold_secret_env`)."""
    with _env_lock:
        _env_secrets.add(var)  # withheld from child processes from now on
        value = os.environ.get(var) or _withheld.get(var)
    if not value:
        raise SecretError(f"secret env:{var} is not set")
    return _checked(_decode(value.encode("utf-8")), f"env:{var}", min_bytes)


def check_private_file(path: str | os.PathLike[str], *, strict: bool = False) -> None:
    """Warn (``strict``: refuse) when a secret file is readable by group or others.

    Only a warning by default: mounted secrets (containers, orchestrators) are often
    0444 inside an already private mount.
    """
    if os.name != "posix":
        return
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        message = (
            f"secret file {os.fspath(path)} is accessible to other users "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600` on it"
        )
        if strict:
            raise SecretError(message)
        warnings.warn(message, InsecureSecretFileWarning, stacklevel=3)


def from_file(
    path: str | os.PathLike[str], *, min_bytes: int = MIN_SECRET_BYTES, strict: bool = False
) -> Secret:
    """The secret in a file (base64 text or raw bytes)."""
    spec = f"file:{os.fspath(path)}"
    try:
        check_private_file(path, strict=strict)
        raw = read_file(path, MAX_SECRET_FILE_BYTES, f"secret {spec}")
    except FileNotFoundError:
        raise SecretError(f"secret {spec} not found") from None
    except OSError as exc:
        raise SecretError(f"secret {spec} cannot be read: {exc.strerror}") from None
    except FormatError:  # over the limit: not a secret, and not read further
        raise SecretError(f"secret {spec} is over {MAX_SECRET_FILE_BYTES:,} bytes: not a "
                          "secret file") from None
    return _checked(_decode(raw), spec, min_bytes)


# Extra secret sources by scheme (e.g. "prefect" for Prefect Secret blocks), registered
# by the layer that knows them, so this library never imports an orchestrator.
_SCHEMES: dict[str, Callable[[str], str | bytes]] = {}


def register_secret_scheme(scheme: str, fetch: Callable[[str], str | bytes]) -> None:
    """Let specs ``<scheme>:<name>`` resolve through ``fetch(name)``."""
    _SCHEMES[scheme] = fetch


def resolve_secret(spec: str, *, min_bytes: int = MIN_SECRET_BYTES, strict: bool = False) -> Secret:
    """The secret named by ``env:NAME``, ``file:PATH`` or a registered ``scheme:NAME``."""
    scheme, _, where = spec.partition(":")
    if not where or scheme not in ("env", "file", *_SCHEMES):
        known = ", ".join(["env:NAME", "file:PATH", *(f"{s}:NAME" for s in _SCHEMES)])
        raise SecretError(f"secret source {spec!r} is not one of {known}")
    if scheme == "env":
        return from_env(where, min_bytes=min_bytes)
    if scheme == "file":
        return from_file(where, min_bytes=min_bytes, strict=strict)
    try:
        raw = _SCHEMES[scheme](where)
    except Exception as exc:  # the source's own error, without any secret in it
        raise SecretError(f"secret source {spec!r} failed: {type(exc).__name__}") from None
    value = raw.encode() if isinstance(raw, str) else raw
    return _checked(_decode(value), spec, min_bytes)


class Secrets:
    """The owner's secrets of one run, each resolved from its source on first use and
    then kept: one resolution per run and process.

    This object refuses to be pickled, so the owner's secrets themselves never reach a
    scheduler or a worker: a worker gets only what it uses, derived from them by the
    driver (``imambig.stages.encode.region_keys``).
    """

    def __init__(self, sources: SecretSources | None = None) -> None:
        self.sources = sources or SecretSources()
        self._values: dict[str, Secret] = {}

    def _get(self, name: str) -> Secret:
        if name not in self._values:
            self._values[name] = resolve_secret(getattr(self.sources, name))
        return self._values[name]

    @property
    def owner_secret(self) -> Secret:
        return self._get("owner_secret")

    @property
    def keystore_key(self) -> Secret:
        return self._get("keystore_key")

    @property
    def signing_key(self) -> Secret:
        return self._get("signing_key")

    def __repr__(self) -> str:
        return f"Secrets({self.sources!r})"

    def __reduce__(self) -> tuple:
        raise TypeError("resolved secrets do not travel; send a process only what it uses, "
                        "derived from them (e.g. imambig.stages.encode.region_keys.RegionKeys)")


# ---------------------------------------------------------------------------
# Secrets out of child processes' environments
# ---------------------------------------------------------------------------

# Child processes (Dask workers above all) start with a copy of this process's
# environment, and another process of the same user reads it in /proc/PID/environ. While
# a cluster runs, the variables that hold secrets are taken out of os.environ and kept
# here, in memory, where from_env still finds them.
_env_lock = threading.Lock()
_env_secrets: set[str] = {OWNER_SECRET_ENV, KEYSTORE_KEY_ENV, SIGNING_KEY_ENV}
_withheld: dict[str, str] = {}
_withholding = 0


def env_names(sources: SecretSources) -> set[str]:
    """The environment variables that ``sources`` read (its ``env:NAME`` specs)."""
    specs = (getattr(sources, f.name) for f in sources.__dataclass_fields__.values())
    return {spec.partition(":")[2] for spec in specs if spec.startswith("env:")}


def withhold_secret_env(names: Iterable[str] = ()) -> None:
    """Take every variable that holds a secret (the default names, those resolved
    through ``env:`` in this process, and ``names``) out of ``os.environ`` until the
    matching :func:`restore_secret_env`; calls nest. ``from_env`` still finds them."""
    global _withholding
    with _env_lock:
        _env_secrets.update(names)
        for name in _env_secrets:
            if (value := os.environ.pop(name, None)) is not None:
                _withheld[name] = value
        _withholding += 1


def restore_secret_env() -> None:
    """Put the withheld variables back once the last withholding ends (a variable set
    again meanwhile keeps its new value), so library callers find their environment as
    they left it."""
    global _withholding
    with _env_lock:
        _withholding = max(0, _withholding - 1)
        if _withholding:
            return
        for name, value in _withheld.items():
            os.environ.setdefault(name, value)
        _withheld.clear()


# ---------------------------------------------------------------------------
# Decoys and seals: the one use of the owner secret's bytes
# ---------------------------------------------------------------------------


def _owner_derived(owner_secret: Secret | bytes, purpose: bytes, model_id: str) -> bytes:
    key = reveal(owner_secret)
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(
            f"owner secret is {len(key)} bytes; at least {MIN_SECRET_BYTES} are required"
        )
    if "\0" in model_id:
        raise ValueError("model ids must not contain NUL")
    return hmac.new(key, purpose + b"\0" + model_id.encode(), hashlib.sha256).digest()


def decoy_seed(owner_secret: Secret | bytes, model_id: str) -> bytes:
    """HMAC-SHA256(owner secret, ``imambig/decoy-map/v1 NUL model``): the seed of the
    owner's secret decoy map for one model. No item id enters it: a record's fakes are
    a function of the image's code (``imambig.mechanism.decoy_map``), so the same image
    publishes the same record under any id."""
    return _owner_derived(owner_secret, b"imambig/decoy-map/v1", model_id)


def seal_key(owner_secret: Secret | bytes, model_id: str) -> bytes:
    """HMAC-SHA256(owner secret, ``imambig/seal/v1 NUL model``): the key under which each
    record's seal is the HMAC of the record (``imambig.mechanism.seal``)."""
    return _owner_derived(owner_secret, b"imambig/seal/v1", model_id)


def noise_fit_key(owner_secret: Secret | bytes, model_id: str) -> bytes:
    """HMAC-SHA256(owner secret, ``imambig/noise-fit/v1 NUL model``): the key of the MAC
    that binds a noise fit to the owner who made it (``imambig.stages.encode.noise_fit``)."""
    return _owner_derived(owner_secret, b"imambig/noise-fit/v1", model_id)


def decoy_rng(owner_secret: Secret | bytes, model_id: str) -> np.random.Generator:
    """A generator seeded by :func:`decoy_seed`."""
    return seeded_rng(decoy_seed(owner_secret, model_id))


def seeded_rng(seed: Secret | bytes) -> np.random.Generator:
    """Philox keyed by the seed's first 128 bits, starting at a counter given by the
    other 128 (so all 256 bits matter)."""
    seed = reveal(seed)
    if len(seed) != 32:
        raise SecretError(f"a decoy seed is 32 bytes, got {len(seed)}")
    import numpy as np

    bit_generator = np.random.Philox(
        key=int.from_bytes(seed[:16], "little"), counter=int.from_bytes(seed[16:], "little")
    )
    return np.random.Generator(bit_generator)
