"""A closed Dask cluster: only this client submits to it, and no worker inherits a secret.

Dask runs what a client sends (it unpickles tasks), so whoever can connect to a
scheduler, a nanny or a worker runs code there and reads what the tasks were given. A
cluster must therefore be trusted and closed to everyone else:

- ``local_cluster``: the cluster an encode starts for itself, on 127.0.0.1. Its
  scheduler, nannies and workers speak TLS with a self-signed certificate made in memory
  for this cluster (``Security.temporary``) and require it of every peer, so another
  local process, without that certificate, cannot connect; their HTTP servers (which
  Dask always starts, unauthenticated) serve a health check only. Workers are spawned fresh
  (never forked: a fork copies this process's memory, secrets included), with the
  variables that hold secrets taken out of the environment they inherit
  (``withhold_secret_env``) for as long as the cluster lives, restarts of killed workers
  included; they come back when it closes.
- ``remote_security``: an existing scheduler is reached over ``tls://`` with the
  operator's CA and client certificate (``ClusterSecurity``). A plain ``tcp://`` one is
  refused unless explicitly allowed, and then warned about.

What the workers need of the secrets travels as task arguments
(``imambig.stages.encode.region_keys``), over these TLS connections.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import dask
from distributed import LocalCluster, Security

from imambig.access.secrets import restore_secret_env, withhold_secret_env
from imambig.config import ClusterSecurity
from imambig.errors import ImambigError

# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. Setting it turns off
# glibc's adaptive mmap threshold, so every large convolution buffer is mmapped and
# unmapped again: torch encodes ~35 % slower (measured: 8.2 vs 12.8 images/s, paper
# preset, one thread). Workers we start get no such variable.
WORKER_DASK_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
# The scheduler and the workers always serve HTTP, without TLS or authentication: the
# scheduler's info and JSON pages show workers, tasks, call stacks and logs to anyone on
# the host. A closed cluster serves its health check only.
CLOSED_HTTP_CONFIG = {"distributed.scheduler.http.routes": ["distributed.http.health"],
                      "distributed.worker.http.routes": ["distributed.http.health"]}


# Two task threads per worker, a two-stage pipeline: one region in the forward pass
# while the other is in the mechanism, reading or writing (``regions._FORWARD`` and
# ``regions._MECHANISM``).
WORKER_THREADS = 2


class InsecureClusterWarning(UserWarning):
    """A Dask scheduler is reached without TLS: anyone on its network can run code on it."""


class ClosedLocalCluster(LocalCluster):
    """A LocalCluster on 127.0.0.1 that only this process can reach, whose workers
    inherit no secret (see the module's docstring)."""

    def __init__(self, n_workers: int | None = None, secret_env: Iterable[str] = (),
                 **kwargs: Any) -> None:
        method = dask.config.get("distributed.worker.multiprocessing-method")
        if method != "spawn":
            raise ImambigError(
                f"Dask is configured to start workers by {method!r}; imambig needs 'spawn' "
                "(distributed.worker.multiprocessing-method): a forked worker would hold a "
                "copy of this process's memory, secrets included")
        self._withholding = True
        withhold_secret_env(secret_env)  # before any worker is spawned, until close
        try:
            # Nannies keep this config for the workers they (re)start.
            with dask.config.set({**WORKER_DASK_CONFIG, **CLOSED_HTTP_CONFIG}):
                super().__init__(n_workers=n_workers or default_workers(),
                                 threads_per_worker=WORKER_THREADS, processes=True, host="127.0.0.1",
                                 dashboard_address="127.0.0.1:0",
                                 scheduler_kwargs={"dashboard": False},
                                 worker_dashboard_address="127.0.0.1:0",
                                 security=Security.temporary(), **kwargs)
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        if getattr(self, "_withholding", False):
            self._withholding = False
            restore_secret_env()

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            self._restore()  # no worker is (re)started any more


def default_workers() -> int:
    """Worker processes of a local cluster: one per core. A worker's two stages then
    share a core with another worker's: on 2 cores two workers encode about as much as
    one for ``small`` and a third more for ``paper``, whose forward pass is the
    bottleneck (docs/benchmarks.md)."""
    return max(1, os.cpu_count() or 1)


def local_cluster(n_workers: int | None = None, secret_env: Iterable[str] = ()
                  ) -> ClosedLocalCluster:
    """``n_workers`` worker processes (default: :func:`default_workers`), each a
    pipeline of ``WORKER_THREADS`` task threads on one torch thread each, on 127.0.0.1,
    closed to other processes; ``secret_env`` names more variables to withhold from the
    workers besides the default ones and those already resolved in this process."""
    return ClosedLocalCluster(n_workers, secret_env)


def remote_security(address: str, security: ClusterSecurity) -> Security | None:
    """How to reach the existing scheduler at ``address``: the operator's certificates
    for ``tls://``; ``None`` (no TLS) for ``tcp://`` only if ``allow_plain_tcp``."""
    scheme, sep, _ = address.partition("://")
    scheme = scheme if sep else "tcp"  # Dask's default for host:port
    if scheme == "tls":
        given = {name: value for name, value in (
            ("tls_ca_file", security.tls_ca_file), ("tls_client_cert", security.tls_cert_file),
            ("tls_client_key", security.tls_key_file)) if value}
        for path in given.values():
            if not os.path.isfile(path):
                raise ImambigError(f"Dask TLS file {path} not found")
        result = Security(require_encryption=True, **given)  # the rest from Dask's config
        if not (result.tls_ca_file and result.tls_client_cert):
            raise ImambigError(
                f"the Dask scheduler {address} needs the cluster's CA and this client's "
                "certificate: --dask-tls-ca and --dask-tls-cert (its key in the same file, "
                "or --dask-tls-key), or Dask's config distributed.comm.tls.ca-file, "
                ".client.cert, .client.key")
        return result
    if scheme != "tcp":
        raise ImambigError(f"Dask scheduler {address}: expected tls://HOST:PORT")
    if not security.allow_plain_tcp:
        raise ImambigError(
            f"refusing the plain tcp:// Dask scheduler {address}: whoever can reach it runs "
            "code on its workers (Dask unpickles what it is sent) and reads the keys an "
            "encode sends them. Use tls:// with the cluster's certificates (--dask-tls-ca, "
            "--dask-tls-cert, --dask-tls-key), or --dask-allow-plain-tcp for a cluster on "
            "a network that only you can reach")
    warnings.warn(
        f"INSECURE: the Dask scheduler {address} is reached without TLS or authentication; "
        "anyone who can reach it or its workers can run code there and read the encode's "
        "keys", InsecureClusterWarning, stacklevel=2)
    return None
