"""Flow: the nightly run of a growing collection. Ingest what is new at the source
(appended: held items never move), encode only the new items into the current store
version (finished regions skipped, a partly filled one topped up), validate both
stores, and leave an artifact with what happened. A night that already ran does
nothing: nothing new to ingest, every region done.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.encode import encode_flow
from flows.ingest import ingest_images
from flows.markdown import markdown_table
from flows.params import check_location, main_with_params
from imambig.config import EncodeConfig, IngestConfig, SecretSources
from imambig.stores.location import Location
from storage_schemas.validate import validate


@task(name="validate stores")
def validate_stores(public: Location, keystore: Location) -> list[str]:
    """Every violation of the two store versions' layouts (empty: both valid)."""
    return [f"{r.url}: {v}" for r in (validate(public), validate(keystore))
            for v in r.violations]


@flow(name="nightly", log_prints=True)
def nightly_flow(
    source: Location,
    images: Location,
    model: Location,
    public_root: Location,
    keys_root: Location,
    ingest_config: IngestConfig | None = None,
    config: EncodeConfig = EncodeConfig(),
    secrets: SecretSources = SecretSources(),
) -> dict[str, Any]:
    """``ingest_config``: for the first night only (a new image store); later nights
    keep the store's settings."""
    check_location(source, "source", must_exist=True)
    check_location(images, "image store")
    report = ingest_images(source, images, ingest_config, False)
    encoded = encode_flow(images, model, public_root, keys_root, config, secrets)
    problems = validate_stores(Location(encoded["public_url"], public_root.storage_options),
                               Location(encoded["keystore_url"], keys_root.storage_options))
    rate = encoded["encoded_now"] / encoded["seconds"] if encoded["seconds"] else 0.0
    summary = {"added": report["written"], "set_aside": report["n_set_aside"],
               "reasons": report["reasons"], "encoded": encoded["encoded_now"],
               "images_per_s": round(rate, 1), "items": encoded["n_items"],
               "version": encoded["version"], "valid": not problems}
    reasons = ", ".join(f"{k} {v}" for k, v in report["reasons"].items()) or "none"
    table = markdown_table(("", ""), [
        ("source", f"`{source}`"), ("items added", summary["added"]),
        ("set aside", f"{summary['set_aside']} ({reasons})"),
        ("items encoded", summary["encoded"]), ("images/s", summary["images_per_s"]),
        ("items in the collection", summary["items"]),
        ("store version", f"`{summary['version']}`"),
        ("stores valid", "yes" if not problems else "NO")])
    create_markdown_artifact(key="nightly-summary", markdown=f"# Nightly run\n\n{table}")
    if problems:
        raise RuntimeError("the stores do not validate: " + "; ".join(problems[:5]))
    print(f"nightly: added {summary['added']}, set aside {summary['set_aside']}, encoded "
          f"{summary['encoded']} ({summary['images_per_s']} images/s); stores valid")
    return summary


def main() -> None:
    main_with_params(nightly_flow, __doc__)


if __name__ == "__main__":
    main()
