"""A lease in the store: one encode run at a time per target.

The lease is a small object holding its owner and an expiry, changed only by
compare-and-swap: created only if absent, replaced or deleted only if unchanged since
it was read (S3 conditional requests: ``If-None-Match: *`` / ``If-Match: <etag>``; on
local disks an exclusive create and a lock file). A second run finds a live lease and
refuses with a clear message. A lease whose holder died is taken over: at once when the
holder ran on this host and its process is gone, otherwise after ``ttl_s``. The holder
renews it while it works, and knows when it lost it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from imambig.stores.location import Location

LEASE_TTL_S = 120.0  # a holder that stops renewing for this long is taken over


class LeaseHeld(RuntimeError):
    """Another run holds the lease."""


# ---------------------------------------------------------------------------
# Compare-and-swap on one object. A token identifies the version read (S3: ETag).
# ---------------------------------------------------------------------------


def precondition_failed(err: BaseException) -> bool:
    """Whether ``err`` is S3's 412 Precondition Failed. s3fs turns it into
    FileExistsError only when the reply names the condition (AWS does); otherwise it is a
    plain OSError whose ``__cause__`` carries botocore's response."""
    if isinstance(err, FileExistsError):
        return True
    response = getattr(err.__cause__, "response", None) or {}
    return (response.get("Error", {}).get("Code") == "PreconditionFailed"
            or response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412)


class S3ObjectCAS:
    """Compare-and-swap on one S3 object; tokens are ETags."""

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.bucket, self.key = path.split("/", 1)

    def _call(self, op: str, **kw: Any) -> Any:
        try:
            return self.fs.call_s3(op, Bucket=self.bucket, Key=self.key, **kw)
        except OSError as err:
            if precondition_failed(err):
                return None
            raise
        finally:
            self.fs.invalidate_cache(f"{self.bucket}/{self.key}")

    def create(self, data: bytes) -> str | None:
        reply = self._call("put_object", Body=data, IfNoneMatch="*")
        return reply and reply["ETag"]

    def read(self) -> tuple[bytes, str] | None:
        # ETag first, body second: if the object changes in between, the token is the
        # older one and any swap based on it fails safely.
        path = f"{self.bucket}/{self.key}"
        self.fs.invalidate_cache(path)
        try:
            token = self.fs.info(path)["ETag"]
            return self.fs.cat_file(path), token
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, token: str) -> str | None:
        reply = self._call("put_object", Body=data, IfMatch=token)
        return reply and reply["ETag"]

    def delete(self, token: str) -> bool:
        return self._call("delete_object", IfMatch=token) is not None


class _Local:
    """Local disk: exclusive create; replace/delete under an exclusive lock file."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _token(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def create(self, data: bytes) -> str | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self._token(data)

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, self._token(data)

    def replace(self, data: bytes, token: str) -> str | None:
        with self._locked():
            now = self.read()
            if now is None or now[1] != token:
                return None
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            return self._token(data)

    def delete(self, token: str) -> bool:
        with self._locked():
            now = self.read()
            if now is None or now[1] != token:
                return False
            os.remove(self.path)
            return True


def _backend(location: Location) -> Any:
    fs, path = location.filesystem()
    if "file" in fs.protocol:
        return _Local(path)
    if "s3" in fs.protocol:
        return S3ObjectCAS(fs, path)
    raise ValueError(f"leases need a local path or s3:// URL, not {location}")


# ---------------------------------------------------------------------------
# The lease
# ---------------------------------------------------------------------------


def _holder_dead(held: dict[str, Any]) -> bool:
    """True when the holder ran on this host and its process is gone (a killed run)."""
    host, _, rest = str(held.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    def __init__(
        self, location: Location, ttl_s: float = LEASE_TTL_S, owner: str | None = None
    ) -> None:
        self.location = location
        self.ttl_s = ttl_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._cas = _backend(location)
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "acquired": now,
                           "expires": now + self.ttl_s}).encode()

    def holder(self) -> dict[str, Any] | None:
        got = self._cas.read()
        if got is None:
            return None
        try:
            return json.loads(got[0])
        except ValueError:
            return {"owner": "unreadable", "expires": 0}

    def acquire(self) -> Lease:
        self._token = self._cas.create(self._record())
        if self._token is None:
            got = self._cas.read()
            held = json.loads(got[0]) if got else None
            if held and held.get("expires", 0) > time.time() and not _holder_dead(held):
                since = time.strftime("%H:%M:%S", time.localtime(held.get("acquired", 0)))
                raise LeaseHeld(
                    f"another encode run ({held.get('owner')}, since {since}) is writing this "
                    f"store (lease {self.location}); wait for it to finish, or if it died on "
                    f"another host, retry after its lease expires in "
                    f"{held['expires'] - time.time():.0f} s"
                )
            # Dead or expired holder: take over, unless another run did so first.
            self._token = (self._cas.replace(self._record(), got[1]) if got
                           else self._cas.create(self._record()))
            if self._token is None:
                raise LeaseHeld(f"another encode run took over the lease {self.location} first")
        self._thread = threading.Thread(target=self._renew, daemon=True, name="imambig-lease")
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            token = self._cas.replace(self._record(), self._token)
            if token is None:  # someone took it over: stop pretending to hold it
                self.lost = True
                return
            self._token = token

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._token and not self.lost:
            self._cas.delete(self._token)
        self._token = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
