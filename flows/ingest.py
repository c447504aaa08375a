"""Flow: source images -> image store."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from flows.markdown import markdown_table
from flows.params import check_location
from imambig.config import IngestConfig
from imambig.stages.ingest import ingest, stored_settings
from imambig.stores.location import Location


@task(name="ingest images", retries=2, retry_delay_seconds=exponential_backoff(5))
def ingest_images(source: Location, out: Location, config: IngestConfig | None,
                  overwrite: bool) -> dict[str, Any]:
    """``config`` None: an existing store's settings (an append), else the defaults."""
    if config is None:
        config = (None if overwrite else stored_settings(out)) or IngestConfig()
    return ingest(source, out, config, overwrite=overwrite).to_dict()


@flow(name="ingest", log_prints=True)
def ingest_flow(
    source: Location,
    out: Location,
    config: IngestConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Into an existing store: appends what it does not hold (``config`` None keeps the
    store's settings)."""
    check_location(out, "image store")
    check_location(source, "source", must_exist=True)
    report = ingest_images(source, out, config, overwrite)
    reasons = markdown_table(("set aside because", "files"),
                             list(report["reasons"].items()) or [("-", 0)])
    create_markdown_artifact(
        key="ingest-report",
        markdown=(f"# Ingestion\n\nImage store: `{out}`\n\n"
                  f"Written: **{report['written']}** of {report['seen']} files; "
                  f"splits {report['splits']}\n\n{reasons}"),
    )
    print(f"ingested {report['written']} images into {out}; set aside {report['n_set_aside']}")
    return {"images": out.url, "written": report["written"], "set_aside": report["n_set_aside"]}
