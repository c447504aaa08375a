"""Flow: seal the keys of chosen items to a user and store the grant file."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.params import check_location
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.secrets import Secrets
from imambig.config import SecretSources
from imambig.stages.share import issue_grant
from imambig.stores.location import Location


@task(name="seal grant")
def seal(public_root: Location, keys_root: Location, item_ids: list[str], recipient: str,
         out: Location, secrets: SecretSources, k_low: int | None) -> int:
    provider = LocalKeyProvider.from_secrets(Secrets(secrets))
    blob = issue_grant(public_root, keys_root, item_ids, recipient, provider, k_low=k_low)
    out.write_bytes(blob)
    return len(blob)  # only the size leaves the task: the grant is for its recipient


@flow(name="grant", log_prints=True)
def grant_flow(
    public_root: Location,
    keys_root: Location,
    item_ids: list[str],
    recipient: str,
    out: Location,
    k_low: int | None = None,
    secrets: SecretSources = SecretSources(),
) -> dict[str, Any]:
    for where, what in ((public_root, "public root"), (keys_root, "keys root"),
                        (out, "grant file")):
        check_location(where, what)
    if not item_ids:
        raise ValueError("no items to grant")
    size = seal(public_root, keys_root, item_ids, recipient, out, secrets, k_low)
    print(f"grant for {len(item_ids)} items written to {out} ({size} bytes)")
    return {"grant": out.url, "items": len(item_ids), "bytes": size}
