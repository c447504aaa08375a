"""Flow: seal the keys of chosen items to a user and store the grant file."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.params import check_secret_spec, check_storage_options
from imambig.access.secrets import LocalKeyProvider
from imambig.config import KeyConfig
from imambig.stages.share import issue_grant
from imambig.stores.location import write_bytes


@task(name="seal grant")
def seal(public_root: str, keys_root: str, item_ids: list[str], recipient: str, out: str,
         keystore_key: str, k_low: int | None, opts: dict[str, Any]) -> int:
    provider = LocalKeyProvider.from_config(KeyConfig(keystore_key_source=keystore_key))
    blob = issue_grant(public_root, keys_root, item_ids, recipient, provider, opts, k_low=k_low)
    write_bytes(out, blob, opts)
    return len(blob)  # only the size leaves the task: the grant is for its recipient


@flow(name="grant", log_prints=True)
def grant_flow(
    public_root: str,
    keys_root: str,
    item_ids: list[str],
    recipient: str,
    out: str,
    keystore_key: str = "env:IMAMBIG_KEYSTORE_KEY",
    k_low: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    opts = check_storage_options(storage_options)
    check_secret_spec(keystore_key, "keystore key")
    if not item_ids:
        raise ValueError("no items to grant")
    size = seal(public_root, keys_root, item_ids, recipient, out, keystore_key, k_low, opts)
    print(f"grant for {len(item_ids)} items written to {out} ({size} bytes)")
    return {"grant": out, "items": len(item_ids), "bytes": size}
