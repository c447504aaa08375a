"""Flow: image store + model -> public store + keystore, regions fanned out on Dask.

The library's encode driver does the work (lease, prepare, regions, lease checks,
finish); this flow supplies how regions are mapped: one Prefect task per region on the
flow's task runner (prefect-dask), with a progress artifact and a per-worker
throughput table (``encode-throughput``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner

from flows.markdown import markdown_table
from flows.params import check_location
from imambig.access.keystore import assert_separate_roots
from imambig.config import ClusterSecurity, EncodeConfig, SecretSources
from imambig.model.checkpoint import MODEL_FILE
from imambig.stages.encode.dask_cluster import local_cluster, remote_security
from imambig.stages.encode.driver import run_encode
from imambig.stages.encode.plan import EncodeJob, Plan, RegionManifest
from imambig.stages.encode.progress import Throughput
from imambig.stages.encode.region_keys import RegionKeys
from imambig.stages.encode.regions import encode_region
from imambig.stores.location import Location


# Transient storage errors (a restarting object store, a dropped connection) are retried
# with backoff; a region redone from scratch writes the same bytes.
# No cache policy: a cache key would be a hash of the arguments, the keys included.
@task(name="encode region {start}-{stop}", retries=3, retry_delay_seconds=exponential_backoff(2),
      retry_jitter_factor=0.5, cache_policy=NO_CACHE)
def encode_region_task(job: EncodeJob, plan: Plan, start: int, stop: int,
                       keys: RegionKeys) -> RegionManifest:
    manifest = encode_region(job, plan, start, stop, keys)
    get_run_logger().info("items %d-%d: %s in %.1f s", start, stop,
                          "already done" if manifest.skipped else "encoded", manifest.seconds)
    return manifest


class PrefectRegions:
    """A ``RegionMapper``: one task per region on the running flow's task runner, and a
    progress artifact and a throughput table (images/s per worker) the operator watches."""

    workers = 0  # the task runner's business

    def map(self, job: EncodeJob, plan: Plan, keys: RegionKeys) -> Iterator[RegionManifest]:
        done = plan.done
        progress = create_progress_artifact(
            progress=100.0 * done / max(plan.total, 1), key="encode-progress",
            description=f"regions of {plan.public} written",
        )
        futures = encode_region_task.map(unmapped(job), unmapped(plan),
                                         [s for s, _ in plan.regions],
                                         [e for _, e in plan.regions], unmapped(keys))
        throughput = Throughput()
        for future in as_completed(futures):
            manifest = future.result()
            done += 1
            throughput.add(manifest)
            update_progress_artifact(progress, progress=100.0 * done / max(plan.total, 1))
            if throughput.manifests:
                # one artifact key: the UI shows its latest version
                create_markdown_artifact(key="encode-throughput", markdown=throughput.markdown(),
                                         description="images/s per worker")
            yield manifest


def dask_runner(address: str | None = None, workers: int | None = None,
                security: ClusterSecurity = ClusterSecurity()) -> DaskTaskRunner:
    """An existing cluster (reached over tls:// as ``security`` says), or a closed local
    cluster of one worker per core (``imambig.stages.encode.dask_cluster``),
    started when the first region is submitted: after the run resolved its secrets, so
    those are withheld from the workers too."""
    if address:
        return DaskTaskRunner(address=address,
                              client_kwargs={"security": remote_security(address, security)})
    return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={"n_workers": workers})


@flow(name="encode", log_prints=True, task_runner=dask_runner())
def encode_flow(
    images: Location,
    model: Location,
    public_root: Location,
    keys_root: Location,
    config: EncodeConfig = EncodeConfig(),
    secrets: SecretSources = SecretSources(),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Secrets are named by source (env:NAME, file:PATH, prefect:BLOCK), never passed."""
    check_location(public_root, "public root")
    check_location(keys_root, "keys root")
    assert_separate_roots(public_root, keys_root)
    check_location(images, "image store", must_exist=True)
    check_location(model.join(MODEL_FILE), "model", must_exist=True)
    job = EncodeJob(images, model, public_root, keys_root, config, secrets)
    report = run_encode(job, PrefectRegions(), overwrite=overwrite, progress=False)
    plan = report.plan
    get_run_logger().info("encoded %d items into %s", report.encoded, plan.public)
    table = markdown_table(("", ""), [
        ("version", f"`{plan.version}`"), ("public store", f"`{plan.public}`"),
        ("keystore", f"`{plan.keystore}`"), ("items", plan.n_items),
        ("encoded in this run", report.encoded),
        ("regions", f"{plan.total} ({plan.done} already done)")])
    create_markdown_artifact(key="encode-summary", markdown=f"# Encoding\n\n{table}")
    return {"version": plan.version, "public_url": plan.public.url,
            "keystore_url": plan.keystore.url, "n_items": plan.n_items,
            "encoded_now": report.encoded, "regions": plan.total,
            "seconds": round(report.seconds, 3)}
