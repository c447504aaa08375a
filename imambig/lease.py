"""A lease in the store: one encode run at a time per target.

The lease is an object created only if absent (an exclusive create on local disks, a
conditional PUT on S3), holding the owner and an expiry. A second run finds it and
refuses with a clear message; a lease whose holder died expires after ``ttl_s`` and is
then taken over. The holder renews it while it works.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from imambig.storage import filesystem


class LeaseHeld(RuntimeError):
    """Another run holds the lease."""


def _create_exclusive(fs: Any, path: str, data: bytes) -> bool:
    """Create ``path`` only if it does not exist; False if it does."""
    if "file" in fs.protocol:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if "s3" in fs.protocol or "s3a" in fs.protocol:
        try:
            fs.call_s3("put_object", Bucket=path.split("/", 1)[0], Key=path.split("/", 1)[1],
                       Body=data, IfNoneMatch="*")
        except Exception as exc:  # botocore wraps 412 Precondition Failed
            if "PreconditionFailed" in repr(exc) or "412" in repr(exc):
                return False
            raise
        fs.invalidate_cache(path)
        return True
    # Other file systems: best effort (check, then write).
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


def _holder_dead(held: dict[str, Any]) -> bool:
    """True when the holder ran on this host and its process is gone (a killed run):
    its lease need not be waited out."""
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
        self, url: str, storage_options: dict | None = None, ttl_s: float = 120.0,
        owner: str | None = None,
    ) -> None:
        self.url = url
        self.fs, self.path = filesystem(url, storage_options)
        self.ttl_s = ttl_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "acquired": now,
                           "expires": now + self.ttl_s}).encode()

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError):
            return None

    def acquire(self) -> Lease:
        if _create_exclusive(self.fs, self.path, self._record()):
            self._start_renewing()
            return self
        held = self.holder()
        if held and held.get("expires", 0) > time.time() and not _holder_dead(held):
            since = time.strftime("%H:%M:%S", time.localtime(held.get("acquired", 0)))
            raise LeaseHeld(
                f"another encode run ({held.get('owner')}, since {since}) is writing this "
                f"store (lease {self.url}); wait for it to finish, or if it died, retry "
                f"after its lease expires in {held['expires'] - time.time():.0f} s"
            )
        # Expired (its holder died): remove and race for a fresh one.
        self.fs.rm(self.path)
        if not _create_exclusive(self.fs, self.path, self._record()):
            raise LeaseHeld(f"another encode run took the expired lease {self.url} first")
        self._start_renewing()
        return self

    def _start_renewing(self) -> None:
        def renew() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                held = self.holder()
                if held and held.get("owner") == self.owner:
                    self.fs.pipe_file(self.path, self._record())

        self._thread = threading.Thread(target=renew, daemon=True, name="imambig-lease")
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        held = self.holder()
        if held and held.get("owner") == self.owner:
            self.fs.rm(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
