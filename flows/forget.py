"""Flow: forget items (a removal request): keys destroyed in every keystore version,
records emptied in every public store version, images removed from the image store."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.markdown import markdown_table
from flows.params import check_location
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.secrets import Secrets
from imambig.config import SecretSources
from imambig.stages.forget import forget
from imambig.stores.location import Location


@task(name="forget items")
def forget_items(item_ids: list[str], images: Location, public_root: Location,
                 keys_root: Location, secrets: SecretSources) -> dict[str, Any]:
    provider = LocalKeyProvider.from_secrets(Secrets(secrets))
    report = forget(item_ids, images, public_root, keys_root, provider, log=print)
    return {"forgotten": len(report.forgotten), "versions": report.versions,
            "problems": report.problems}


@flow(name="forget", log_prints=True)
def forget_flow(
    item_ids: list[str],
    images: Location,
    public_root: Location,
    keys_root: Location,
    secrets: SecretSources = SecretSources(),
) -> dict[str, Any]:
    """Item names go into the run's parameters: for names that are themselves personal
    data, run ``imambig forget --items-file`` instead."""
    for where, what in ((images, "image store"), (public_root, "public root"),
                        (keys_root, "keys root")):
        check_location(where, what, must_exist=True)
    if not item_ids:
        raise ValueError("no items to forget")
    result = forget_items(item_ids, images, public_root, keys_root, secrets)
    problems = markdown_table(("item", "not forgotten because"), result["problems"].items())
    create_markdown_artifact(
        key="forget-report",
        markdown=(f"# Forget\n\nForgotten: **{result['forgotten']}** items in the image "
                  f"store and {len(result['versions'])} store versions.\n\n"
                  + (problems if result["problems"] else "")),
    )
    return result
