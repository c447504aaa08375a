"""Sharing: the owner grants items to a user; the user reveals them.

A grant carries only the keys of the granted items (signed by the owner, sealed to the
recipient's X25519 key); the public records come from the public store and the decoder
from the published model. Nothing else of the keystore leaves the owner.

Neither side takes the storage provider's word for anything. The owner maps item names
to keystore slots through the public store's ``item_id`` array, so each slot's sealed
opaque id must be the item's, and each public record must hash to the digest sealed
beside its key, or no grant is issued. The user checks the model file against the
grant's model id before loading it, and each fetched record against the grant's digest
before decoding it.

Lower-fidelity grants carry the ``k_low`` revealed entries of each map themselves
(positions and values, :mod:`imambig.mechanism.grant_entries`) and no seal: nothing in
them unseals, locates or ranks another entry of the record. Which ``k_low`` of the ``k``
real entries is fixed per record by a secret order derived from its seal, so grants at
several ``k_low`` nest, and the same photo filed under several names reveals no more
than the largest grant of it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from imambig.access.grant import (
    DEFAULT_VALID_DAYS,
    Grant,
    GrantError,
    GrantItem,
    open_grant,
    seal_grant,
)
from imambig.access.identity import Identity
from imambig.access.key_provider import KeyProvider
from imambig.access.keystore import Keystore
from imambig.errors import KeyFormatError, StoreFormatError, TamperedError
from imambig.evaluation.metrics import to_uint8
from imambig.mechanism.grant_entries import (
    decode_entries_keys,
    encode_entries_keys,
    entries_code,
    is_entries_key,
    revealed_entries,
)
from imambig.mechanism.keys import check_sealed, stored_records
from imambig.model.checkpoint import load_model
from imambig.stages.grant_decoder import (
    NO_DECODER_WARNING,
    grant_decoder_location,
    load_grant_decoder,
    published_decoder_id,
)
from imambig.stages.versions import resolve_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore, record_digests


def issue_grant(
    public: Location,
    keystore: Location,
    item_ids: list[str],
    recipient: str,
    provider: KeyProvider,
    signer: Ed25519PrivateKey,
    k_low: int | None = None,
    note: str = "",
    valid_days: float = DEFAULT_VALID_DAYS,
    model: Location | None = None,
    log: Callable[[str], None] | None = None,
) -> bytes:
    """Sign with ``signer`` and seal to ``recipient`` (an ``imambig-pub-v1:`` key) the
    keys of the items named ``item_ids`` (their source paths). ``public`` and
    ``keystore`` are stores or roots (their current version is used).

    ``k_low`` issues lower-fidelity keys: ``k_low`` real entries per map themselves,
    a secret random subset fixed per record (see the module docstring), to be revealed
    with the grant decoder published beside ``model`` (the model folder), named in the
    grant (:mod:`imambig.stages.grant_decoder`); without one ``log`` gets a warning.
    """
    public_store = resolve_store(public)
    store = PublicStore.open(public_store)
    if not store.complete:
        raise ValueError(f"{public_store} is not complete; finish encoding first")
    ks = Keystore.open(resolve_store(keystore), provider)
    ks.check_public(store)
    opaque = ks.opaque_ids(item_ids)
    forgotten = ks.attrs.get("forgotten", {})
    if gone := [f"{n} (on {forgotten[o]})" for n, o in zip(item_ids, opaque, strict=True)
                if o in forgotten]:
        raise GrantError(f"{len(gone)} items were forgotten at the owner's request and have "
                         f"no key any more: {gone[:5]}; no grant issued")
    idx = ks.positions(opaque, names=item_ids)
    slots = ks.entries(idx)
    records = store.record_digests(idx, opaque)
    changed = [n for n, r, s in zip(item_ids, records, slots, strict=True) if r != s.record]
    if changed:
        raise TamperedError(
            f"the public records of {len(changed)} items differ from what was encoded "
            f"(substituted or corrupted by the storage provider): {changed[:5]}; no grant "
            "issued")
    keys = [s.key for s in slots]
    try:
        check_sealed(keys)  # the records are sealed: a key without its seal opens nothing
    except KeyFormatError as exc:
        raise GrantError(f"the keystore does not hold the keys of {public_store}'s sealed "
                         f"records ({exc}); no grant issued") from None
    decoder_id = ""
    if k_low is not None:
        if model is not None:
            decoder_id = published_decoder_id(model, ks.attrs["model_id"], k_low)
        if not decoder_id and log is not None:
            log(f"warning: no grant decoder: {NO_DECODER_WARNING}")
        mask, values = store.read(idx)
        keys = encode_entries_keys(*revealed_entries(stored_records(mask, values, keys),
                                                     k_low))
    items = tuple(GrantItem(n, o, int(i), s.record, k)
                  for n, o, i, s, k in zip(item_ids, opaque, idx, slots, keys, strict=True))
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=valid_days)
    grant = Grant(ks.attrs["model_id"], ks.attrs["public_store_id"], ks.attrs["version"],
                  public_store.url, items, expires_at=expires.isoformat(timespec="seconds"),
                  note=note, decoder_id=decoder_id)
    return seal_grant(grant, signer, recipient)


@dataclass(frozen=True)
class Revealed:
    item_ids: list[str]  # the items' names, as granted
    images: np.ndarray  # (B, H, W, 3) uint8


@torch.no_grad()
def reveal(
    grant_blob: bytes,
    identity: Identity,
    owner: Ed25519PublicKey | str,
    model: Location,
    public: Location | None = None,
    now: datetime | None = None,
) -> Revealed:
    """Reconstruct the granted images from the public store, the grant and the model.

    ``owner`` is the owner's public key the user pinned: the grant must be signed by it.
    ``public`` overrides the store recorded in the grant (e.g. after publication to
    another bucket); it must be the same store version. The recorded store is reached
    with the model location's storage options.
    """
    grant: Grant = open_grant(grant_blob, identity, owner, now)
    net, _, _ = load_model(model, expected_id=grant.model_id)
    store = PublicStore.open(public or Location(grant.store_url, model.storage_options))
    if store.attrs["store_id"] != grant.store_id:
        raise GrantError(f"{store.location} is not the store version the grant is for "
                         f"({grant.version})")
    c = net.config
    if (store.attrs["n_maps"], store.attrs["code_length"]) != (c.n_maps, c.code_length):
        raise StoreFormatError(f"{store.location} does not have the model's code shape")
    keys = [i.key for i in grant.items]
    _refuse_forgotten(store, grant)
    low = [is_entries_key(k) for k in keys]
    if any(low) and not all(low):
        raise GrantError("the grant mixes full and lower-fidelity keys; ask for two grants")
    if all(low):
        # A lower-fidelity key holds its entries: the public record adds nothing to it.
        positions, values = decode_entries_keys(keys, c.n_maps, c.code_length)
        code = entries_code(positions, values)
        if grant.decoder_id:
            try:
                net = load_grant_decoder(model, grant.decoder_id, values.shape[-1])
            except FileNotFoundError:
                raise GrantError(f"the grant is revealed with grant decoder {grant.decoder_id}, "
                                 f"which is not in {grant_decoder_location(model)}: fetch the "
                                 "owner's published model folder whole") from None
    else:
        code = _authorized_code(store, grant, keys)
    images = to_uint8(net.decode(code)).permute(0, 2, 3, 1).numpy()
    return Revealed([i.name for i in grant.items], images)


def _refuse_forgotten(store: PublicStore, grant: Grant) -> None:
    """Refuse items whose record the owner destroyed (``imambig forget``): the store no
    longer holds their id, and their record is empty."""
    idx = np.array([i.index for i in grant.items], dtype=np.int64)
    inside = idx < store.n_items
    if not inside.any():
        return
    ids = store.item_ids(idx[inside])
    moved = [(item, j) for item, j, now in zip(
        [i for i, ok in zip(grant.items, inside, strict=True) if ok], idx[inside], ids,
        strict=True) if now != item.item_id]
    if not moved:
        return
    mask, _ = store.read(np.array([j for _, j in moved], dtype=np.int64))
    gone = [item.name for (item, _), m in zip(moved, mask, strict=True) if not m.any()]
    if gone:
        raise GrantError(f"{len(gone)} granted items were forgotten at the owner's request "
                         f"(their records destroyed): {gone[:5]}; nothing revealed")


def _authorized_code(store: PublicStore, grant: Grant, keys: list[bytes]) -> torch.Tensor:
    """The full keys' code: each public record fetched, checked against the grant's
    digest, unsealed and kept at its real entries."""
    try:
        check_sealed(keys)  # before any record is fetched
    except KeyFormatError as exc:
        raise GrantError(f"the grant holds keys that cannot open the store's sealed records "
                         f"({exc}); ask the owner for a new grant") from None
    idx = np.array([i.index for i in grant.items], dtype=np.int64)
    if idx.max() >= store.n_items:
        raise TamperedError(f"{store.location} holds {store.n_items} items, fewer than the "
                            "grant's positions (truncated by the storage provider?)")
    mask, values = store.read(idx)
    records = record_digests(grant.store_id, [i.item_id for i in grant.items], mask, values)
    substituted = [i.name for i, r in zip(grant.items, records, strict=True) if r != i.record]
    if substituted:
        raise TamperedError(
            f"the public records of {len(substituted)} granted items differ from the ones "
            f"granted (substituted or corrupted by the storage provider): {substituted[:5]}; "
            "nothing revealed")
    return stored_records(mask, values, keys).authorized_code()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
             *(f"LPT{i}" for i in range(10))}


def output_names(names: Sequence[str], suffix: str = ".png") -> list[str]:
    """Safe, distinct file names for revealed items: letters, digits, ``._-`` only, no
    leading dot, no device name, at most ~110 characters. A name kept as it was (its
    extension replaced by ``suffix``) when it is already safe and new; otherwise a short
    digest of the whole item name is appended, so different items never share a file
    (whatever their ``/``, ``\\``, ``..``, drive letters or letter case)."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", name)
        safe = _UNSAFE.sub("_", stem).strip("._-")[:100] or "item"
        tag = hashlib.sha256(name.encode()).hexdigest()
        if safe != stem or safe.lower() in seen or safe.split(".")[0].upper() in _RESERVED:
            safe = f"{safe}-{tag[:10]}"
        n = 10
        while safe.lower() in seen:  # only if two digests' prefixes collide
            n += 2
            safe = f"{safe.rsplit('-', 1)[0]}-{tag[:n]}"
        seen.add(safe.lower())
        out.append(safe + suffix)
    return out


def write_revealed(folder: Path, revealed: Revealed, scale: int = 1) -> list[Path]:
    """PNG files of ``revealed`` in ``folder`` (made if missing), named by
    :func:`output_names`; never follows a link planted in the folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in zip(output_names(revealed.item_ids), revealed.images, strict=True):
        picture = Image.fromarray(img)
        if scale > 1:
            picture = picture.resize((img.shape[1] * scale, img.shape[0] * scale),
                                     Image.NEAREST)
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
        with os.fdopen(fd, "wb") as f:
            picture.save(f, format="PNG")
        paths.append(path)
    return paths
