"""How store versions are named and found under their roots.

A public root and a key root each hold versioned stores, ``v-<model id>-k<k'>-d<noise
design>``, and a ``current.json`` pointer to the last complete version, which encoding
moves only when a version is complete. The encode lease of a version lives beside the
versions (``_leases/``), not inside one: creating a store clears its folder.
"""

from __future__ import annotations

import json

from imambig.mechanism.noise_model import NOISE_DESIGN
from imambig.stores.location import Location

CURRENT = "current.json"
LEASES = "_leases"


def version_name(model_id: str, k_public: int) -> str:
    # The noise design is part of the name: a store is never finished with other fakes.
    return f"v-{model_id}-k{k_public}-d{NOISE_DESIGN}"


def lease_location(keys_root: Location, version: str) -> Location:
    return keys_root.join(LEASES, f"{version}.json")


def set_current(root: Location, version: str, n_items: int) -> None:
    """Point ``root``'s ``current.json`` at a complete ``version``."""
    pointer = json.dumps({"version": version, "n_items": n_items}).encode()
    root.join(CURRENT).write_bytes(pointer)


def current_version(root: Location) -> Location:
    """The store version ``root``'s ``current.json`` names."""
    raw = root.join(CURRENT).read_bytes()
    if raw is None:
        raise FileNotFoundError(f"{root} has no complete store yet (no {CURRENT})")
    return root.join(json.loads(raw)["version"])


def resolve_store(location: Location) -> Location:
    """A store's location as given, or, for a root, the version its pointer names."""
    return location if location.join("zarr.json").exists() else current_version(location)
