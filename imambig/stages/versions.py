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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from imambig.mechanism.noise_model import NOISE_DESIGN
from imambig.stores.lease import Lease, LeaseHeld
from imambig.stores.location import Location

VERSION_NAME = re.compile(r"^v-(?P<model>[0-9a-f]{16})-k(?P<k>\d+)-d(?P<design>\d+)$")

CURRENT = "current.json"
LEASES = "_leases"


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


def _pointer(root: Location) -> dict:
    raw = root.join(CURRENT).read_bytes()
    if raw is None:
        return {}
    try:
        pointer = json.loads(raw)
    except ValueError:
        raise ValueError(f"{root.join(CURRENT)} is not a version pointer") from None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
        raise ValueError(f"{root.join(CURRENT)} is not a version pointer")
    return pointer


def current_version(root: Location) -> Location:
    """The store version ``root``'s ``current.json`` names."""
    raw = root.join(CURRENT).read_bytes()
    if raw is None:
        raise FileNotFoundError(f"{root} has no complete store yet (no {CURRENT})")
    return root.join(json.loads(raw)["version"])


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
    raw = store.join("zarr.json").read_bytes()
    if raw is None:
        return {}
    try:
        return dict(json.loads(raw).get("attributes", {}))
    except (ValueError, AttributeError):
        return {}


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
            int(a.get("n_items", 0)), a.get("complete") is True, name == current,
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
