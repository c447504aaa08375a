"""Flow: sign and seal the keys of chosen items to a user and store the grant file."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.params import check_location
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.config import SecretSources
from imambig.stages.share import issue_grant
from imambig.stores.location import Location


@task(name="seal grant")
def seal(public_root: Location, keys_root: Location, item_ids: list[str], recipient: str,
         out: Location, secrets: SecretSources, k_low: int | None,
         model: Location | None) -> tuple[int, str]:
    resolved = Secrets(secrets)
    signer = signing_key(resolved.signing_key)
    blob = issue_grant(public_root, keys_root, item_ids, recipient,
                       LocalKeyProvider.from_secrets(resolved), signer, k_low=k_low,
                       model=model, log=print)
    out.write_bytes(blob)
    # Only the size and the owner's *public* key leave the task: the grant is for its
    # recipient, and users pin the public key to check grants.
    return len(blob), public_text(signer)


@flow(name="grant", log_prints=True)
def grant_flow(
    public_root: Location,
    keys_root: Location,
    item_ids: list[str],
    recipient: str,
    out: Location,
    k_low: int | None = None,
    model: Location | None = None,
    secrets: SecretSources = SecretSources(),
) -> dict[str, Any]:
    """``k_low`` grants k_low of each map's real entries; ``model`` (its folder) then
    names the grant decoder they are revealed with."""
    for where, what in ((public_root, "public root"), (keys_root, "keys root"),
                        (out, "grant file")):
        check_location(where, what)
    if not item_ids:
        raise ValueError("no items to grant")
    size, owner = seal(public_root, keys_root, item_ids, recipient, out, secrets, k_low,
                       model)
    print(f"grant for {len(item_ids)} items written to {out} ({size} bytes), signed by {owner}")
    return {"grant": out.url, "items": len(item_ids), "bytes": size, "owner_key": owner}
