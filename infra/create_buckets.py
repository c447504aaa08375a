"""Create imambig's buckets on an S3-compatible server, waiting for it to come up.

A one-shot job for docker compose and Kubernetes; safe to re-run (existing buckets are
left alone). Credentials and endpoint come from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``)::

    python -m infra.create_buckets imambig-public imambig-keys imambig-images imambig-models
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import botocore.exceptions
import botocore.session
from botocore.config import Config


def s3_client(region: str | None = None):
    """A botocore S3 client from the environment (endpoint included)."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return botocore.session.Session().create_client(
        "s3",
        region_name=region or "us-east-1",
        # Path-style: SeaweedFS and most self-hosted servers have no per-bucket DNS names.
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )


def wait_until_up(client, timeout: float) -> None:
    """Poll ListBuckets until the server answers, or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            # Compose/Kubernetes start this job alongside the server; it may not be up yet.
            if time.monotonic() >= deadline:
                raise TimeoutError(f"S3 did not answer within {timeout:.0f} s: {err}") from err
            time.sleep(1.0)


def create_buckets(client, names: Sequence[str]) -> list[str]:
    """Create each bucket unless it exists; the names that were created now."""
    created = []
    errors = client.exceptions
    for name in names:
        try:
            client.create_bucket(Bucket=name)
            created.append(name)
        except (errors.BucketAlreadyOwnedByYou, errors.BucketAlreadyExists):
            pass
    return created


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.create_buckets", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("buckets", nargs="*", help="bucket names (default: $IMAMBIG_BUCKETS)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for S3")
    args = parser.parse_args(argv)
    names = args.buckets or os.environ.get("IMAMBIG_BUCKETS", "").split()
    if not names:
        parser.error("no bucket names given (arguments or IMAMBIG_BUCKETS)")
    client = s3_client()
    try:
        wait_until_up(client, args.timeout)
    except TimeoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    created = set(create_buckets(client, names))
    for name in names:
        print(f"s3://{name} {'created' if name in created else 'exists'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
