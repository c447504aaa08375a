"""Regions on a Dask cluster: one task per region, manifests back, arrays never.

Tasks take the job (locations, settings), the index range and the keys derived for the
run (``RegionKeys``), and return a small manifest. The cluster is closed to everyone
but this client (``imambig.stages.encode.dask_cluster``). Workers run two tasks at a
time as a pipeline, one region in the encoder's forward pass while the other is in the
mechanism (or reads or writes), each stage on one torch thread
(``imambig.stages.encode.regions``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from imambig.access.secrets import env_names
from imambig.config import ClusterSecurity
from imambig.stages.encode.dask_cluster import WORKER_DASK_CONFIG, local_cluster, remote_security
from imambig.stages.encode.plan import EncodeJob, Plan, RegionManifest
from imambig.stages.encode.region_keys import RegionKeys
from imambig.stages.encode.regions import encode_region

__all__ = ["WORKER_DASK_CONFIG", "DaskRegions", "local_cluster"]


class DaskRegions:
    """A ``RegionMapper`` on an existing scheduler (``address``, reached as
    ``security`` says), on a cluster object the caller started (``cluster``, e.g. a
    ``local_cluster()``; its own credentials) or on a closed local cluster started for
    the run and closed after it."""

    def __init__(self, address: str | None = None, n_workers: int | None = None,
                 security: ClusterSecurity = ClusterSecurity(), cluster: Any = None) -> None:
        if address and cluster is not None:
            raise ValueError("give a scheduler address or a cluster, not both")
        self.address = address
        self.n_workers = n_workers
        self.cluster = cluster
        # Checked now, before the run takes its lease or writes anything.
        self.security = remote_security(address, security) if address else None
        self.workers = 0

    def map(self, job: EncodeJob, plan: Plan, keys: RegionKeys) -> Iterator[RegionManifest]:
        if not plan.regions:
            return  # nothing to do: no cluster to start
        from distributed import Client, as_completed

        ours = None  # a cluster started here, closed here
        if not self.address and self.cluster is None:
            ours = local_cluster(self.n_workers, env_names(job.secrets))
        try:
            # A cluster object brings its own (in-memory) credentials.
            client = (Client(self.address, security=self.security) if self.address
                      else Client(self.cluster or ours))
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        try:
            self.workers = len(client.scheduler_info().get("workers", {}))
            futures = [
                client.submit(encode_region, job, plan, s, e, keys,
                              key=f"encode-region-{s}-{e}", retries=2, pure=False)
                for s, e in plan.regions
            ]
            for future in as_completed(futures):
                yield future.result()
        finally:
            client.close()
            if ours is not None:
                ours.close()
