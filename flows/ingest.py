"""Flow: source images -> image store."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from flows.params import check_location
from imambig.config import IngestConfig
from imambig.stages.ingest import ingest
from imambig.stores.location import Location


@task(name="ingest images", retries=2, retry_delay_seconds=exponential_backoff(5))
def ingest_images(source: Location, out: Location, config: IngestConfig,
                  overwrite: bool) -> dict[str, Any]:
    return ingest(source, out, config, overwrite=overwrite).to_dict()


@flow(name="ingest", log_prints=True)
def ingest_flow(
    source: Location,
    out: Location,
    config: IngestConfig = IngestConfig(),
    overwrite: bool = False,
) -> dict[str, Any]:
    check_location(out, "image store")
    check_location(source, "source", must_exist=True)
    report = ingest_images(source, out, config, overwrite)
    reasons = "\n".join(f"| {r} | {n} |" for r, n in report["reasons"].items()) or "| - | 0 |"
    create_markdown_artifact(
        key="ingest-report",
        markdown=(f"# Ingestion\n\nImage store: `{out}`\n\n"
                  f"Written: **{report['written']}** of {report['seen']} files; "
                  f"splits {report['splits']}\n\n| set aside because | files |\n|---|---|\n"
                  f"{reasons}\n"),
    )
    print(f"ingested {report['written']} images into {out}; set aside {report['n_set_aside']}")
    return {"images": out.url, "written": report["written"], "set_aside": report["n_set_aside"]}
