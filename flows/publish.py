"""Flow: promote the current public store to a publication location."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from flows.params import check_storage_options
from imambig.stages.publish import publish, verify_publication
from imambig.stages.share import resolve_store


@task(name="copy and verify", retries=3, retry_delay_seconds=exponential_backoff(2))
def copy_store(source: str, target_root: str, opts: dict[str, Any]) -> dict[str, Any]:
    report = publish(source, target_root, opts)
    problems = verify_publication(report.target, opts)
    if problems:
        raise OSError(f"publication {report.target} failed verification: {problems[:3]}")
    return {"target": report.target, "objects": report.objects, "bytes": report.bytes,
            "copied": report.copied, "manifest": report.manifest}


@flow(name="publish", log_prints=True)
def publish_flow(public_root: str, target_root: str,
                 storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    opts = check_storage_options(storage_options)
    source = resolve_store(public_root, opts)
    out = copy_store(source, target_root, opts)
    create_markdown_artifact(
        key="publication",
        markdown=(f"# Publication\n\n`{source}` -> `{out['target']}`\n\n"
                  f"{out['objects']} objects, {out['bytes']:,} bytes ({out['copied']} copied "
                  f"now), manifest `{out['manifest']}`\n"),
    )
    return out
