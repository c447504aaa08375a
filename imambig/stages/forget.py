"""Forgetting an item: a person asks for their photo to be removed, or a photo was
ingested by mistake.

For each named item, in every store version under the roots and in the image store:

- keystore: its slot becomes a tombstone (key and record digest all zero, the row
  re-sealed), and ``forgotten`` in the keystore's attributes records when. Records are
  sealed, so this is what makes every copy of the old record useless: without the key
  it is AES-CTR output (``tests/test_forget.py`` tries every key the owner still has);
- public store: its record is overwritten with an empty one (no support, zero values)
  and its id replaced by the tombstone's, so grants already issued are refused at
  reveal (``imambig.stages.share`` checks that a granted record still exists);
- image store: its pixels are zeroed, its name replaced by ``forgotten:<sha-256 of the
  name>`` and its identity by -1; training, noise fits and evaluation skip it, later
  encodes publish it as a tombstone, and an append refuses the name and the file's
  bytes (their digest is kept) so it never comes back.

Each version is changed under its encode lease, so no encode writes it meanwhile; a run
that stopped half-way is finished by running it again. What
cannot be taken back: copies of the image or of its key that grantees made while they
held them, and the entries a lower-fidelity grant carries itself (reveal refuses them,
a grantee's own software need not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from imambig.access.key_provider import KeyProvider
from imambig.access.keystore import Keystore, Slot
from imambig.stages.versions import lease_location, list_versions
from imambig.stores.image_store import ImageStoreWriter, forgotten_id, open_image_store
from imambig.stores.lease import Lease
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore


@dataclass
class ForgetReport:
    forgotten: list[str] = field(default_factory=list)  # names
    problems: dict[str, str] = field(default_factory=dict)  # name -> why not
    versions: list[str] = field(default_factory=list)  # store versions changed

    def summary(self) -> str:
        lines = [f"forgot {len(self.forgotten)} items in the image store and "
                 f"{len(self.versions)} store versions"]
        lines += [f"  {name}: {why}" for name, why in sorted(self.problems.items())]
        return "\n".join(lines)


def forget(names: list[str], images: Location, public_root: Location,
           keys_root: Location, provider: KeyProvider,
           log: Callable[[str], None] | None = None) -> ForgetReport:
    """Forget the items ``names`` (their source paths) everywhere; an unknown or
    already forgotten name is reported and the rest go on."""
    say = log or (lambda _m: None)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    report = ForgetReport()
    store = open_image_store(images)
    ids = store.item_ids().tolist()
    where = {n: i for i, n in enumerate(ids)}
    todo: dict[str, int] = {}
    for name in dict.fromkeys(names):
        if name in where:
            todo[name] = where[name]
        elif forgotten_id(name) in where:
            report.problems[name] = "already forgotten"
        else:
            report.problems[name] = f"not in the image store {images}"
    if not todo:
        return report
    for v in list_versions(public_root, keys_root):
        if not (v.in_public and v.in_keys):
            continue
        with Lease(lease_location(keys_root, v.name)):
            _forget_in_version(public_root.join(v.name), keys_root.join(v.name), provider,
                               todo, now)
        report.versions.append(v.name)
        say(f"{v.name}: {len(todo)} records destroyed, keys tombstoned")
    _forget_in_images(images, todo)
    report.forgotten = list(todo)
    say(f"image store {images}: {len(todo)} images removed")
    return report


def _forget_in_version(public_loc: Location, keys_loc: Location, provider: KeyProvider,
                       todo: dict[str, int], now: str) -> None:
    public = PublicStore.open(public_loc, mode="r+")
    keystore = Keystore.open(keys_loc, provider, mode="r+")
    keystore.check_public(public)
    chunk = public.chunk_items
    forgotten = dict(keystore.attrs.get("forgotten", {}))
    # Who sits where comes from the sealed slots (the owner's own, authenticated data),
    # not from the public store's item_id array.
    by_region: dict[int, list[tuple[str, int]]] = {}
    for name, i in todo.items():
        if i < public.n_items:  # encoded after this version: nothing of it here
            by_region.setdefault(i // chunk, []).append((name, i))
    for row, items in sorted(by_region.items()):
        start, stop = row * chunk, min((row + 1) * chunk, public.n_items)
        slots = keystore.read_row(row)
        todo_here = []
        for name, i in items:
            old_id, new_id = keystore.opaque_ids([name, forgotten_id(name)])
            held = slots[i - start].item_id
            if held == new_id:
                continue  # done here by an earlier run that stopped before the end
            if held != old_id:
                raise ValueError(f"{public_loc} holds another item at {name!r}'s position "
                                 f"{i}: the image store and this version disagree")
            forgotten[old_id] = now
            todo_here.append((i, new_id))
        if not todo_here:
            continue
        mask, values = public.read(slice(start, stop))
        for i, new_id in todo_here:
            mask[i - start], values[i - start] = False, 0
            slots[i - start] = Slot.tombstone(new_id, keystore.key_bytes)
        public.write_region(start, mask, values, [s.item_id for s in slots])
        keystore.write_row(row, slots)
    keystore.set_attrs(forgotten=forgotten)
    public.consolidate()


def _forget_in_images(images: Location, todo: dict[str, int]) -> None:
    writer = ImageStoreWriter.open(images)
    group = writer.group
    blank = np.zeros((1, *writer.images.shape[1:]), np.uint8)
    for name, i in todo.items():
        writer.write_tail(i, blank)
        group["item_id"][i] = forgotten_id(name)
        group["identity"][i] = -1
