"""Flow: source images -> image store."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from flows.params import check_exists, check_storage_options
from imambig.config import IngestConfig
from imambig.stages.ingest import ingest


@task(name="ingest images", retries=2, retry_delay_seconds=exponential_backoff(5))
def ingest_images(source: str, out: str, cfg: IngestConfig, limit: int | None,
                  storage_options: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    report = ingest(source, out, cfg, limit=limit, storage_options=storage_options,
                    overwrite=overwrite)
    return report.to_dict()


@flow(name="ingest", log_prints=True)
def ingest_flow(
    source: str,
    out: str,
    split: str = "identity:0.8",
    height: int = 128,
    width: int | None = None,
    crop: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    opts = check_storage_options(storage_options)
    check_exists(source, "source", opts)
    cfg = IngestConfig(height=height, width=width or height, crop=crop, split=split, seed=seed,
                       workers=1)
    report = ingest_images(source, out, cfg, limit, opts, overwrite)
    reasons = "\n".join(f"| {r} | {n} |" for r, n in report["reasons"].items()) or "| - | 0 |"
    create_markdown_artifact(
        key="ingest-report",
        markdown=(f"# Ingestion\n\nImage store: `{out}`\n\n"
                  f"Written: **{report['written']}** of {report['seen']} files; "
                  f"splits {report['splits']}\n\n| set aside because | files |\n|---|---|\n"
                  f"{reasons}\n"),
    )
    print(f"ingested {report['written']} images into {out}; set aside {report['n_set_aside']}")
    return {"images": out, "written": report["written"], "set_aside": report["n_set_aside"]}
