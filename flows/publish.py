"""Flow: promote the current public store to a publication location."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from flows.params import check_location
from imambig.stages.publish import publish, verify_publication
from imambig.stages.versions import resolve_store
from imambig.stores.location import Location


@task(name="copy and verify", retries=3, retry_delay_seconds=exponential_backoff(2))
def copy_store(source: Location, target_root: Location) -> dict[str, Any]:
    report = publish(source, target_root)
    problems = verify_publication(report.target)
    if problems:
        raise OSError(f"publication {report.target} failed verification: {problems[:3]}")
    return {"target": report.target.url, "objects": report.objects, "bytes": report.bytes,
            "copied": report.copied, "manifest": report.manifest.url}


@flow(name="publish", log_prints=True)
def publish_flow(public_root: Location, target_root: Location) -> dict[str, Any]:
    check_location(public_root, "public root")
    check_location(target_root, "publication root")
    source = resolve_store(public_root)
    out = copy_store(source, target_root)
    create_markdown_artifact(
        key="publication",
        markdown=(f"# Publication\n\n`{source}` -> `{out['target']}`\n\n"
                  f"{out['objects']} objects, {out['bytes']:,} bytes ({out['copied']} copied "
                  f"now), manifest `{out['manifest']}`\n"),
    )
    return out
