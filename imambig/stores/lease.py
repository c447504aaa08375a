"""A lease in the store: one encode run at a time per target.

The lease is a small object holding its owner (a token unique to the run) and an expiry,
changed only by compare-and-swap: created only if absent, replaced or deleted only if
unchanged since it was read (S3 conditional requests: ``If-None-Match: *`` /
``If-Match: <etag>``; on local disks a file linked into place, which fails if one is
there, and a lock file). A second run finds a live lease and refuses with a clear
message. A lease whose holder died is taken over: at once when the holder ran in this
very kernel and PID namespace and its process is gone, otherwise after ``ttl_s``. The
holder renews it while it works.

Everything a run writes is *fenced*: before each region's commit and done-marker a
worker reads the lease back (:class:`Fence`) and stops at the first sign that its run no
longer holds it. An S3 endpoint that ignores conditional writes would let two runs hold
one lease, so acquiring first probes that the endpoint honours them, and reads the lease
back afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imambig.errors import FormatError, StorageUnavailableError
from imambig.stores.location import Location
from imambig.untrusted import parse_json

LEASE_TTL_S = 120.0  # a holder that stops renewing for this long is taken over
# A lease record is a few hundred bytes; a larger object was not written by a run and is
# read only this far (its token then covers what was read).
LEASE_LIMIT = 64 << 10


class LeaseHeld(RuntimeError):
    """Another run holds the lease."""


class LeaseLost(LeaseHeld):
    """This run held the lease and no longer does: it must stop writing."""


class UnsafeStorage(RuntimeError):
    """The storage endpoint does not honour conditional writes: no lease can be safe."""


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
    """Compare-and-swap on one S3 object; tokens are ETags.

    A conditional write whose answer was lost (a reset, a timeout, a reply cut short)
    may have been carried out: the retry then fails its own precondition (412). So a
    refused write reads the object back, and one that now holds exactly the bytes it
    wrote was this write's own doing. Writers' bytes are unique to them (the lease
    record names its run and the time), so no other writer's success passes for one.
    """

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

    def _landed(self, data: bytes) -> str | None:
        """After a refused write: the object's ETag when it holds ``data`` (an attempt of
        this write went through, its answer was lost), else None."""
        got = self.read()
        return got[1] if got is not None and got[0] == data else None

    def create(self, data: bytes) -> str | None:
        reply = self._call("put_object", Body=data, IfNoneMatch="*")
        return reply["ETag"] if reply else self._landed(data)

    def read(self) -> tuple[bytes, str] | None:
        # ETag first, body second: if the object changes in between, the token is the
        # older one and any swap based on it fails safely.
        path = f"{self.bucket}/{self.key}"
        self.fs.invalidate_cache(path)
        try:
            token = self.fs.info(path)["ETag"]
            return self.fs.cat_file(path, start=0, end=LEASE_LIMIT + 1), token
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, token: str) -> str | None:
        reply = self._call("put_object", Body=data, IfMatch=token)
        return reply["ETag"] if reply else self._landed(data)

    def delete(self, token: str) -> bool:
        # Refused and gone: an attempt of this delete went through (or another run's
        # did; either way the object no longer names this run).
        return self._call("delete_object", IfMatch=token) is not None or self.read() is None

    def check_conditional_writes(self) -> None:
        """Refuse an endpoint that ignores ``If-None-Match`` or ``If-Match`` (some
        S3-compatible servers do): on one, two runs could both "create" the lease."""
        probe = S3ObjectCAS(self.fs, f"{self.bucket}/{self.key}.probe-{uuid.uuid4().hex}")
        try:
            if probe.create(b"first") is None:
                raise UnsafeStorage(f"cannot write to s3://{self.bucket}/{self.key}'s folder")
            if probe.create(b"second") is not None:
                raise UnsafeStorage(
                    f"the S3 endpoint for s3://{self.bucket} ignores If-None-Match "
                    "(conditional create): leases cannot keep two encode runs apart there; "
                    "use an endpoint that honours conditional writes (AWS S3, SeaweedFS, "
                    "MinIO)")
            if probe.replace(b"third", '"00000000000000000000000000000000"') is not None:
                raise UnsafeStorage(
                    f"the S3 endpoint for s3://{self.bucket} ignores If-Match (conditional "
                    "replace): leases cannot keep two encode runs apart there")
        finally:
            with contextlib.suppress(OSError):
                self.fs.rm_file(f"{probe.bucket}/{probe.key}")


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
        # Written whole under a temporary name, then linked into place (link fails if
        # the name exists): readers never see a partial lease, and a crash mid-write
        # leaves only a temporary file, never a lease that locks the target forever.
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lease-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.link(tmp, self.path)
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        return self._token(data)

    def check_conditional_writes(self) -> None:
        """Local files: exclusive links and locks always hold."""

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read(LEASE_LIMIT + 1)
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


@functools.cache
def _this_kernel() -> tuple[str, str]:
    """(boot id, PID namespace) of this process; empty where /proc does not tell. A PID
    means the same process only within one kernel boot and one PID namespace."""
    def read(how: Any) -> str:
        try:
            return str(how())
        except OSError:
            return ""
    return (read(lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip()),
            read(lambda: os.readlink("/proc/self/ns/pid")))


def _start_time(pid: int) -> str:
    """Start time of process ``pid`` in clock ticks since boot ("" if unknown): tells a
    reused PID from the process that held the lease."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _holder_dead(held: dict[str, Any]) -> bool:
    """True only when the holder ran in this kernel boot and PID namespace, and its
    process is gone (or its PID now belongs to a later process): a killed run. On another
    host, in another container, or without /proc, a holder is waited for (``ttl_s``)."""
    boot, pid_ns = _this_kernel()
    pid = held.get("pid")
    if (not boot or not pid_ns or held.get("host") != socket.gethostname()
            or held.get("boot_id") != boot or held.get("pid_ns") != pid_ns
            or not isinstance(pid, int) or not 0 < pid < 1 << 31):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    started = _start_time(pid)
    return bool(started) and started != held.get("pid_start")


def _time(value: object) -> bool:
    """A time a run could have written (epoch seconds), not NaN, infinity or year 10^9."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 0 <= value < 1 << 40)


def _parse(got: tuple[bytes, str] | None) -> dict[str, Any] | None:
    """A lease record; an unreadable one counts as expired (whole-object writes never
    leave one behind, so no live run holds it)."""
    if got is None:
        return None
    try:
        held = parse_json(got[0], "lease", LEASE_LIMIT)
    except FormatError:
        held = None
    if (isinstance(held, dict) and _time(held.get("expires"))
            and _time(held.get("acquired", 0))):
        return held
    return {"owner": "unreadable", "acquired": 0, "expires": 0}


@dataclass(frozen=True)
class Fence:
    """What a worker checks before each commit: the lease still names this run (its
    token) and has not expired. Picklable; holds no secret."""

    location: Location
    owner: str

    def check(self, before: str) -> None:
        held = _parse(_backend(self.location).read())
        if held is None or held.get("owner") != self.owner:
            raise LeaseLost(f"lost the lease {self.location} to another run; stopping "
                            f"before {before}")
        if held["expires"] < time.time():
            raise LeaseLost(f"the lease {self.location} expired (renewal stopped); "
                            f"stopping before {before}")


class Lease:
    def __init__(
        self, location: Location, ttl_s: float = LEASE_TTL_S, owner: str | None = None
    ) -> None:
        self.location = location
        self.ttl_s = ttl_s
        # The fence token: unique to this run, so a later run on the same host and PID
        # never passes for this one.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._cas = _backend(location)
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _record(self) -> bytes:
        now = time.time()
        boot, pid_ns = _this_kernel()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(),
                           "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
                           "boot_id": boot, "pid_ns": pid_ns,
                           "acquired": now, "expires": now + self.ttl_s}).encode()

    def holder(self) -> dict[str, Any] | None:
        return _parse(self._cas.read())

    def fence(self) -> Fence:
        return Fence(self.location, self.owner)

    def _refuse_live(self, held: dict[str, Any] | None) -> None:
        """``LeaseHeld`` when ``held`` is a live run's lease."""
        if held and held["expires"] > time.time() and not _holder_dead(held):
            since = time.strftime("%H:%M:%S", time.localtime(held.get("acquired", 0)))
            raise LeaseHeld(
                f"another encode run ({str(held.get('owner'))[:200]}, since {since}) is "
                f"writing this store (lease {self.location}); wait for it to finish, or if it "
                f"died on another host, retry after its lease expires in "
                f"{held['expires'] - time.time():.0f} s"
            )

    def check_free(self) -> None:
        """Refuse (``LeaseHeld``) now, writing nothing, where a live run holds the lease:
        a run checks this before work that precedes taking it (a noise fit)."""
        self._refuse_live(self.holder())

    def acquire(self) -> Lease:
        self._cas.check_conditional_writes()
        self._token = self._cas.create(self._record())
        if self._token is None:
            got = self._cas.read()
            self._refuse_live(_parse(got))
            # Dead or expired holder: take over, unless another run did so first.
            self._token = (self._cas.replace(self._record(), got[1]) if got
                           else self._cas.create(self._record()))
            if self._token is None:
                raise LeaseHeld(f"another encode run took over the lease {self.location} first")
        # Read back: the lease must name this run now, whatever the endpoint claimed.
        self.fence().check("starting")
        self._thread = threading.Thread(target=self._renew, daemon=True, name="imambig-lease")
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                token = self._cas.replace(self._record(), self._token)
                if token is None:
                    # Refused: taken over (stop pretending to hold it), unless an
                    # earlier renewal of ours went through after all.
                    got = self._cas.read()
                    if got is None or (_parse(got) or {}).get("owner") != self.owner:
                        self.lost = True
                        return
                    token = got[1]
            except StorageUnavailableError:
                # The store is down for now: try again next period (workers' fences
                # stop the run should the lease expire meanwhile).
                continue
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
