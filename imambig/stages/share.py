"""Access: the owner grants items to a user; the user reveals them.

A grant carries only the keys of the granted items (sealed to the recipient's X25519
key); the public records come from the public store and the decoder from the published
model. Nothing else of the keystore leaves the owner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imambig.access.grant import Grant, GrantError, open_grant, seal_grant
from imambig.access.identity import Identity
from imambig.access.keystore import Keystore
from imambig.access.secrets import KeyProvider
from imambig.evaluation.metrics import to_uint8
from imambig.mechanism.keys import decode_keys, encode_keys, lower_fidelity
from imambig.mechanism.record import scatter_code
from imambig.model.checkpoint import load_model
from imambig.stages.encode_regions import current_version
from imambig.stores.location import filesystem, join
from imambig.stores.public_store import PublicStore


def resolve_store(url: str, storage_options: dict | None = None) -> str:
    """A store URL, or a root whose ``current.json`` names the store version."""
    fs, path = filesystem(join(url, "zarr.json"), storage_options)
    return url if fs.exists(path) else current_version(url, storage_options)


def issue_grant(
    public: str,
    keystore: str,
    item_ids: list[str],
    recipient: str,
    provider: KeyProvider,
    storage_options: dict | None = None,
    k_low: int | None = None,
    note: str = "",
) -> bytes:
    """Seal the keys of ``item_ids`` to ``recipient`` (an ``imambig-pub-v1:`` key).

    ``k_low`` issues lower-fidelity keys: only the ``k_low`` largest real entries of each
    map are revealed.
    """
    public_url = resolve_store(public, storage_options)
    store = PublicStore.open(public_url, storage_options)
    if not store.complete:
        raise ValueError(f"{public_url} is not complete; finish encoding first")
    ks = Keystore.open(resolve_store(keystore, storage_options), provider, storage_options)
    if ks.attrs["public_store_id"] != store.attrs["store_id"]:
        raise ValueError("the keystore belongs to another public store")
    idx = store.index_of(item_ids)
    keys = ks.keys(idx)
    if k_low is not None:
        real = decode_keys(keys)
        _, values = store.read(idx)
        keys = encode_keys(lower_fidelity(real, values.astype(np.float32), k_low))
    grant = Grant(store.attrs["model_id"], public_url, dict(zip(item_ids, keys, strict=True)),
                  note=note)
    return seal_grant(grant, recipient)


@dataclass(frozen=True)
class Revealed:
    item_ids: list[str]
    images: np.ndarray  # (B, H, W, 3) uint8


@torch.no_grad()
def reveal(
    grant_blob: bytes,
    identity: Identity,
    model: str,
    storage_options: dict | None = None,
    public: str | None = None,
) -> Revealed:
    """Reconstruct the granted images from the public store, the grant and the model.

    ``public`` overrides the store URL recorded in the grant (e.g. after publication to
    another bucket); the store's id and model must still match.
    """
    grant: Grant = open_grant(grant_blob, identity)
    net, info, _ = load_model(model, storage_options)
    if info.model_id != grant.model_id:
        raise GrantError(f"the grant is for model {grant.model_id}, not {info.model_id}")
    store = PublicStore.open(public or grant.store_url, storage_options)
    if store.attrs["model_id"] != grant.model_id:
        raise GrantError(f"{store.url} was encoded with another model than the grant's")
    ids = list(grant.keys)
    idx = store.index_of(ids)
    mask, values = store.read(idx)
    real = decode_keys([grant.keys[i] for i in ids], n_maps=int(store.attrs["n_maps"]),
                       k_public=int(store.attrs["k_public"]))
    code = scatter_code(mask, np.where(real, values, 0))
    images = to_uint8(net.decode(code)).permute(0, 2, 3, 1).numpy()
    return Revealed(ids, images)
