"""Serve the deployments from this process (no work pool needed): a scheduled nightly
incremental re-encode and a manual full re-encode of one collection.

    python -m flows.serve --images URL --model URL --public URL --keys URL [--cron "0 2 * * *"]

The same deployments for work pools are in ``infra/prefect/prefect.yaml``.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import serve

from flows.encode import encode_flow
from imambig.cli import add_serve_arguments


def deployments(params: dict[str, Any], cron: str | None = "0 2 * * *",
                interval: float | None = None) -> list:
    nightly = encode_flow.to_deployment(
        name="nightly-reencode", cron=None if interval else cron, interval=interval,
        parameters=params, description="Incremental encoding of newly ingested images.",
        tags=["imambig", "scheduled"],
    )
    full = encode_flow.to_deployment(
        name="full-reencode", parameters={**params, "overwrite": True},
        description="Rebuild the store version from scratch, started by hand.",
        tags=["imambig", "manual"],
    )
    return [nightly, full]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_serve_arguments(p)
    p.add_argument("--interval", type=float, default=None,
                   help="seconds between runs instead of --cron (testing)")
    a = p.parse_args()
    params = {"images": a.images, "model": a.model, "public_root": a.public,
              "keys_root": a.keys, "chunk_items": a.chunk_items}
    serve(*deployments(params, a.cron, a.interval))


if __name__ == "__main__":
    main()
