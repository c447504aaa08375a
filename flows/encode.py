"""Flow: image store + model -> public store + keystore, regions fanned out on Dask."""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner

from flows.params import check_exists, check_secret_spec, check_storage_options
from imambig.access.keystore import assert_separate_roots
from imambig.config import EncodeConfig, KeyConfig
from imambig.stages import encode_regions as enc
from imambig.stages.encode_driver import local_cluster
from imambig.stores.lease import Lease, LeaseHeld

# Transient storage errors (a restarting object store, a dropped connection) are retried
# with backoff; a region redone from scratch writes the same bytes.
RETRY = dict(retries=3, retry_delay_seconds=exponential_backoff(2), retry_jitter_factor=0.5)


@task(name="prepare stores", **RETRY)
def prepare_stores(job: enc.EncodeJob, overwrite: bool) -> enc.Plan:
    return enc.prepare(job, overwrite=overwrite)


@task(name="encode region {start}-{stop}", **RETRY)
def encode_region(job: enc.EncodeJob, plan: enc.Plan, start: int, stop: int) -> dict[str, Any]:
    manifest = enc.encode_region(job, plan, start, stop)
    get_run_logger().info("items %d-%d: %s in %.1f s", start, stop,
                          "already done" if manifest.skipped else "encoded", manifest.seconds)
    return manifest.to_dict()


@task(name="finish stores", **RETRY)
def finish_stores(job: enc.EncodeJob, plan: enc.Plan) -> None:
    enc.finish(job, plan)


def dask_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """An existing cluster, or a LocalCluster of one single-threaded worker per core."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={"n_workers": workers})


@flow(name="encode", log_prints=True, task_runner=dask_runner())
def encode_flow(
    images: str,
    model: str,
    public_root: str,
    keys_root: str,
    k_public: int | None = None,
    chunk_items: int = 512,
    owner_secret: str = "env:IMAMBIG_OWNER_SECRET",
    keystore_key: str = "env:IMAMBIG_KEYSTORE_KEY",
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Secrets are named by spec (env:NAME, file:PATH, prefect:BLOCK), never passed."""
    opts = check_storage_options(storage_options)
    assert_separate_roots(public_root, keys_root)
    check_exists(images, "image store", opts)
    check_exists(model.rstrip("/") + "/model.pt", "model", opts)
    check_secret_spec(owner_secret, "owner secret")
    check_secret_spec(keystore_key, "keystore key")
    job = enc.EncodeJob(
        images=images, model=model, public_root=public_root, keys_root=keys_root,
        config=EncodeConfig(k_public=k_public, chunk_items=chunk_items),
        keys=KeyConfig(owner_secret_source=owner_secret, keystore_key_source=keystore_key),
        storage_options=json.dumps(opts),
    )
    logger = get_run_logger()
    version = enc.target_version(job)
    try:
        lease = Lease(enc.lease_url(job, version), opts).acquire()
    except LeaseHeld as exc:
        raise RuntimeError(str(exc)) from None
    try:
        plan = prepare_stores(job, overwrite)
        total = len(plan.regions) + plan.done
        done = plan.done
        progress = create_progress_artifact(
            progress=100.0 * done / max(total, 1), key="encode-progress",
            description=f"regions of {plan.public_url} written",
        )
        futures = encode_region.map(unmapped(job), unmapped(plan),
                                     [s for s, _ in plan.regions], [e for _, e in plan.regions])
        encoded = 0
        for fut in as_completed(futures):
            m = fut.result()
            done += 1
            encoded += 0 if m["skipped"] else m["items"]
            update_progress_artifact(progress, progress=100.0 * done / max(total, 1))
        if lease.lost:
            raise RuntimeError("lost the store lease to another run; not finishing")
        finish_stores(job, plan)
    finally:
        lease.release()
    logger.info("encoded %d items into %s", encoded, plan.public_url)
    summary = {"version": plan.version, "public_url": plan.public_url,
               "keystore_url": plan.keystore_url, "n_items": plan.n_items,
               "encoded_now": encoded, "regions": total}
    create_markdown_artifact(
        key="encode-summary",
        markdown=(f"# Encoding\n\n| | |\n|---|---|\n| version | `{plan.version}` |\n"
                  f"| public store | `{plan.public_url}` |\n| keystore | `{plan.keystore_url}` |\n"
                  f"| items | {plan.n_items} |\n| encoded in this run | {encoded} |\n"
                  f"| regions | {total} ({plan.done} already done) |\n"),
    )
    return summary
