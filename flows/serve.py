"""Serve the deployments from this process (no work pool needed): a scheduled nightly
incremental re-encode and a manual full re-encode of one collection.

    imambig serve --images URL --model URL --public URL --keys URL [--cron "0 2 * * *"]
                  [--source URL]   (the nightly run also ingests what is new there)
    python -m flows.serve ...   (the same)

The same deployments for work pools are in ``infra/prefect/prefect.yaml``. ``imambig
serve`` comes from here through the ``imambig.commands`` entry point (``add_command``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imambig.config import EncodeConfig
from imambig.stores.location import Location


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="image store to re-encode")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--public", required=True, help="public store root")
    p.add_argument("--keys", required=True, help="keystore root")
    p.add_argument("--region-items", "--chunk-items", dest="region_items", type=int,
                   default=EncodeConfig().region_items,
                   help="items per region: one public-store chunk, one keystore row, one task")
    p.add_argument("--source", default=None,
                   help="folder or URL the collection grows in: each nightly run first "
                        "appends its new images to --images (flows/nightly.py), then "
                        "encodes them; without it the nightly run encodes what was ingested")
    p.add_argument("--cron", default="0 2 * * *", help="nightly schedule (UTC)")
    p.add_argument("--interval", type=float, default=None,
                   help="seconds between runs instead of --cron (testing)")


def add_command(sub: argparse._SubParsersAction) -> None:
    """``imambig serve``."""
    p = sub.add_parser(
        "serve",
        help="serve the scheduled nightly re-encode and the manual full re-encode",
        description="Registers two Prefect deployments of the encode flow for one collection "
                    "and runs their flows from this process: nightly-reencode (cron "
                    "schedule; encodes only new images) and full-reencode (by hand). Needs "
                    "PREFECT_API_URL pointing at a Prefect server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def deployments(params: dict[str, Any], cron: str | None = "0 2 * * *",
                interval: float | None = None, source: Location | None = None) -> list[Any]:
    from flows.encode import encode_flow
    from flows.nightly import nightly_flow

    schedule = {"cron": None if interval else cron, "interval": interval,
                "tags": ["imambig", "scheduled"]}
    if source is None:
        nightly = encode_flow.to_deployment(
            name="nightly-reencode", parameters=params,
            description="Incremental encoding of newly ingested images.", **schedule)
    else:
        nightly = nightly_flow.to_deployment(
            name="nightly-reencode", parameters={**params, "source": source},
            description="Ingest what is new at the source (appended), encode only it, "
                        "validate the stores.", **schedule)
    full = encode_flow.to_deployment(
        name="full-reencode", parameters={**params, "overwrite": True},
        description="Rebuild the store version from scratch, started by hand: the same "
                    "model and mechanism publish byte-identical records; any change of "
                    "noise fit, k', precision or owner secret is refused (a new model id "
                    "is the way to publish other fakes).",
        tags=["imambig", "manual"],
    )
    return [nightly, full]


def run(a: argparse.Namespace) -> int:
    from prefect import serve

    params = {"images": Location(a.images), "model": Location(a.model),
              "public_root": Location(a.public), "keys_root": Location(a.keys),
              "config": EncodeConfig(region_items=a.region_items)}
    source = Location(a.source) if a.source else None
    serve(*deployments(params, a.cron, a.interval, source))
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(p)
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
