"""Sharing: the owner grants items to a user; the user reveals them.

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
from imambig.access.key_provider import KeyProvider
from imambig.access.keystore import Keystore
from imambig.evaluation.metrics import to_uint8
from imambig.mechanism.keys import decode_keys, encode_keys, lower_fidelity
from imambig.mechanism.record import scatter_code
from imambig.model.checkpoint import load_model
from imambig.stages.versions import resolve_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore


def issue_grant(
    public: Location,
    keystore: Location,
    item_ids: list[str],
    recipient: str,
    provider: KeyProvider,
    k_low: int | None = None,
    note: str = "",
) -> bytes:
    """Seal the keys of ``item_ids`` to ``recipient`` (an ``imambig-pub-v1:`` key).
    ``public`` and ``keystore`` are stores or roots (their current version is used).

    ``k_low`` issues lower-fidelity keys: only the ``k_low`` largest real entries of each
    map are revealed.
    """
    public_store = resolve_store(public)
    store = PublicStore.open(public_store)
    if not store.complete:
        raise ValueError(f"{public_store} is not complete; finish encoding first")
    ks = Keystore.open(resolve_store(keystore), provider)
    if ks.attrs["public_store_id"] != store.attrs["store_id"]:
        raise ValueError("the keystore belongs to another public store")
    idx = store.index_of(item_ids)
    keys = ks.keys(idx)
    if k_low is not None:
        real = decode_keys(keys)
        _, values = store.read(idx)
        keys = encode_keys(lower_fidelity(real, values.astype(np.float32), k_low))
    grant = Grant(store.attrs["model_id"], public_store.url,
                  dict(zip(item_ids, keys, strict=True)),
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
    model: Location,
    public: Location | None = None,
) -> Revealed:
    """Reconstruct the granted images from the public store, the grant and the model.

    ``public`` overrides the store recorded in the grant (e.g. after publication to
    another bucket); the store's id and model must still match. The recorded store is
    reached with the model location's storage options.
    """
    grant: Grant = open_grant(grant_blob, identity)
    net, info, _ = load_model(model)
    if info.model_id != grant.model_id:
        raise GrantError(f"the grant is for model {grant.model_id}, not {info.model_id}")
    store = PublicStore.open(public or Location(grant.store_url, model.storage_options))
    if store.attrs["model_id"] != grant.model_id:
        raise GrantError(f"{store.location} was encoded with another model than the grant's")
    ids = list(grant.keys)
    idx = store.index_of(ids)
    mask, values = store.read(idx)
    real = decode_keys([grant.keys[i] for i in ids], n_maps=int(store.attrs["n_maps"]),
                       k_public=int(store.attrs["k_public"]))
    code = scatter_code(mask, np.where(real, values, 0))
    images = to_uint8(net.decode(code)).permute(0, 2, 3, 1).numpy()
    return Revealed(ids, images)
