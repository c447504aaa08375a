"""A real Prefect server on 127.0.0.1, started and stopped from Python.

Used by the tests, by ``imambig demo`` (so the main job needs no server started by
hand) and by ``infra/scripts``. Dask workers need a real API to report task runs to:
Prefect's ephemeral mode would start one private server per worker process.

    python -m infra.prefect_server --home runs/prefect [--port 4200]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_bin() -> str:
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else "prefect"


class PrefectServer:
    def __init__(self, home: str | Path | None = None, port: int | None = None,
                 start_timeout: float = 180.0, settings: dict[str, str] | None = None) -> None:
        self._tmp = None if home else tempfile.TemporaryDirectory(prefix="imambig-prefect-")
        self.home = Path(home or self._tmp.name)  # type: ignore[union-attr]
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.settings = settings or {}  # extra server settings (PREFECT_SERVER_...)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Variables that point a Prefect client (flows, Dask workers) at this server."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_TO_API_ENABLED": "true",
        }

    def _server_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env()}
        env.pop("PREFECT_API_URL")  # the server itself does not talk to an API
        env["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
        env["PREFECT_SERVER_API_PORT"] = str(self.port)
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
            f"sqlite+aiosqlite:///{self.home / 'prefect.db'}")
        env["PREFECT_UI_API_URL"] = self.api_url
        env.update(self.settings)
        return env

    @property
    def database(self) -> Path:
        return self.home / "prefect.db"

    def start(self) -> PrefectServer:
        if self.proc and self.proc.poll() is None:
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        env = self._server_env()
        # Migrate first: on a fresh database this outlasts the server's start-up timeout.
        subprocess.run([_prefect_bin(), "server", "database", "upgrade", "-y"], env=env,
                       check=True, capture_output=True, timeout=self.start_timeout)
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [_prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited:\n{self.log_tail()}")
            with (contextlib.suppress(OSError),
                  urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r):
                if r.status == 200:
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer in {self.start_timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        path = self.home / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--home", default="runs/prefect", help="PREFECT_HOME (database, logs)")
    p.add_argument("--port", type=int, default=4200)
    a = p.parse_args()
    server = PrefectServer(a.home, a.port).start()
    print(f"Prefect UI: {server.ui_url}\n")
    for k, v in server.env().items():
        print(f"export {k}={v}")
    try:
        while server.proc and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
