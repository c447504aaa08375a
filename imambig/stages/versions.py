"""How store versions are named and found under their roots.

A public root and a key root each hold versioned stores, ``v-<model id>-k<k'>-d<noise
design>``, and a ``current.json`` pointer to the last complete version, which encoding
moves only when a version is complete. The encode lease of a version lives beside the
versions (``_leases/``), not inside one: creating a store clears its folder.

``current.json`` also keeps when each earlier version stopped being current, so that
``prune`` removes an old version (both stores together) only after a grace period in
which holders of its grants could move on.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from imambig.errors import StoreFormatError
from imambig.mechanism.noise_model import NOISE_DESIGN
from imambig.stores.lease import Lease, LeaseHeld
from imambig.stores.location import Location
from imambig.untrusted import parse_json

# \Z, not $: a name is joined to a root, so not even a trailing newline gets through.
VERSION_NAME = re.compile(
    r"^v-(?P<model>[0-9a-f]{16})-k(?P<k>[0-9]{1,9})-d(?P<design>[0-9]{1,9})\Z")

CURRENT = "current.json"
LEASES = "_leases"
# A pointer names one version and when others stopped being current: a few kB even
# after years of nightly versions; anything larger was not written here.
POINTER_LIMIT = 1 << 20


def version_name(model_id: str, k_public: int) -> str:
    # The noise design is part of the name: a store is never finished with other fakes.
    return f"v-{model_id}-k{k_public}-d{NOISE_DESIGN}"


def lease_location(keys_root: Location, version: str) -> Location:
    return keys_root.join(LEASES, f"{version}.json")


def set_current(root: Location, version: str, n_items: int) -> None:
    """Point ``root``'s ``current.json`` at a complete ``version``, noting when the
    version it named before stopped being current."""
    pointer = _pointer(root)
    superseded = dict(pointer.get("superseded", {}))
    if pointer.get("version") not in (None, version):
        superseded[pointer["version"]] = time.time()
    superseded.pop(version, None)
    pointer = {"version": version, "n_items": n_items}
    if superseded:  # absent until a version is replaced: one-version pointers keep their bytes
        pointer["superseded"] = superseded
    root.join(CURRENT).write_bytes(json.dumps(pointer).encode())


def parse_pointer(raw: bytes, where: str) -> dict:
    """A ``current.json``'s content, checked: ``version`` a version name (so joining it
    to the root never leaves the root), ``n_items`` a count, ``superseded`` version
    names to times. ``StoreFormatError`` otherwise: the roots may be a provider's."""
    what = f"{where} (version pointer)"
    pointer = parse_json(raw, what, POINTER_LIMIT, StoreFormatError)
    if not isinstance(pointer, dict):
        raise StoreFormatError(f"{what} is not a JSON object")
    version = pointer.get("version")
    if not isinstance(version, str) or not VERSION_NAME.match(version):
        raise StoreFormatError(f"{what} names no store version ({str(version)[:80]!r} is "
                               "not of the form v-<model id>-k<k'>-d<design>)")
    n_items = pointer.get("n_items", 0)
    if not isinstance(n_items, int) or isinstance(n_items, bool) or n_items < 0:
        raise StoreFormatError(f"{what}: n_items is not a count")
    superseded = pointer.get("superseded", {})
    if not isinstance(superseded, dict) or not all(
            isinstance(name, str) and VERSION_NAME.match(name)
            and isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
            for name, t in superseded.items()):
        raise StoreFormatError(f"{what}: superseded must map version names to times")
    return pointer


def _pointer(root: Location) -> dict:
    raw = root.join(CURRENT).read_bytes(limit=POINTER_LIMIT)
    if raw is None:
        return {}
    return parse_pointer(raw, str(root.join(CURRENT)))


def current_version(root: Location) -> Location:
    """The store version ``root``'s ``current.json`` names."""
    pointer = _pointer(root)
    if not pointer:
        raise FileNotFoundError(f"{root} has no complete store yet (no {CURRENT})")
    return root.join(pointer["version"])


def resolve_store(location: Location) -> Location:
    """A store's location as given, or, for a root, the version its pointer names."""
    return location if location.join("zarr.json").exists() else current_version(location)


@dataclass(frozen=True)
class VersionInfo:
    """One store version under a public root and a key root."""

    name: str
    model_id: str
    k_public: int
    precision: str  # the encoder's (the records depend on it); "?" where unreadable
    items: int
    complete: bool
    current: bool
    in_public: bool  # its public store exists
    in_keys: bool  # its keystore exists
    changed: float  # when it stopped being current, else when it was last written (epoch s)
    leased: bool  # a run holds its lease now

    def row(self) -> str:
        when = datetime.fromtimestamp(self.changed, UTC).strftime("%Y-%m-%d %H:%M")
        where = ("both" if self.in_public and self.in_keys
                 else "public only" if self.in_public else "keys only")
        state = ("current" if self.current else "complete" if self.complete
                 else "incomplete") + (", leased" if self.leased else "")
        return (f"{self.name:36} {self.model_id:16} {self.k_public:>5} {self.precision:>9} "
                f"{self.items:>9,} {when:16} {where:11} {state}")


HEADER = (f"{'version':36} {'model':16} {'k′':>5} {'precision':>9} {'items':>9} "
          f"{'since (UTC)':16} {'stores':11} state")


def _modified(location: Location) -> float:
    """When the object at ``location`` was last written (epoch s), 0 where unknown."""
    fs, path = location.filesystem()
    try:
        info = fs.info(path)
    except (FileNotFoundError, OSError):
        return 0.0
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
    return 0.0


def _attrs(store: Location) -> dict:
    """A store's attributes for the listing; empty where unreadable (a listing shows
    what is there, it does not refuse)."""
    try:
        raw = store.join("zarr.json").read_bytes(limit=POINTER_LIMIT)
        doc = parse_json(raw, str(store.join("zarr.json"))) if raw is not None else {}
    except ValueError:  # FormatError: oversized or not JSON
        return {}
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _stores(root: Location) -> set[str]:
    # A store is its zarr.json: some object stores keep an emptied folder as a name.
    return {n for n in root.names()
            if VERSION_NAME.match(n) and root.join(n, "zarr.json").exists()}


def list_versions(public_root: Location, keys_root: Location) -> list[VersionInfo]:
    """Every store version under the two roots, the current one flagged."""
    pointer = _pointer(public_root)
    current, superseded = pointer.get("version"), pointer.get("superseded", {})
    in_public, in_keys = _stores(public_root), _stores(keys_root)
    out = []
    for name in sorted(in_public | in_keys):
        m = VERSION_NAME.match(name)
        assert m is not None
        store = public_root.join(name) if name in in_public else keys_root.join(name)
        a = _attrs(store)
        fit = a.get("noise_fit") if isinstance(a.get("noise_fit"), dict) else {}
        changed = superseded.get(name) or _modified(store.join("zarr.json"))
        holder = Lease(lease_location(keys_root, name)).holder()
        out.append(VersionInfo(
            name, m["model"], int(m["k"]), str(fit.get("precision", "?")),
            _count(a.get("n_items")), a.get("complete") is True, name == current,
            name in in_public, name in in_keys, float(changed),
            holder is not None and holder.get("expires", 0) > time.time()))
    return out


def prune(public_root: Location, keys_root: Location, *, grace_days: float = 7.0,
          dry_run: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """Delete the versions other than the current one (public store and keystore
    together) that stopped being current, or were last written, more than
    ``grace_days`` ago; a version whose lease a run holds is left alone. Returns the
    names deleted (or, with ``dry_run``, that would be)."""
    if grace_days < 0:
        raise ValueError(f"the grace period must be >= 0 days, got {grace_days}")
    cutoff = time.time() - grace_days * 86400
    gone = []
    for v in list_versions(public_root, keys_root):
        if v.current:
            continue
        if v.changed > cutoff:
            left = (v.changed - cutoff) / 86400
            log(f"keeping {v.name}: within the grace period ({left:.1f} days left)")
            continue
        if dry_run:
            log(f"would delete {v.name}")
            gone.append(v.name)
            continue
        try:
            # Held while deleting: an encode of this version cannot start meanwhile.
            with Lease(lease_location(keys_root, v.name)):
                public_root.join(v.name).delete()
                keys_root.join(v.name).delete()
        except LeaseHeld as exc:
            log(f"keeping {v.name}: {exc}")
            continue
        lease_location(keys_root, v.name).delete()
        log(f"deleted {v.name} (public store and keystore)")
        gone.append(v.name)
    return gone
