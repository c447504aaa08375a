"""Stores of items in chunks whose group attributes record the counts: the public store
and the keystore (``n_items``, ``chunk_items`` in their layouts)."""

from __future__ import annotations

from typing import Any


class ItemChunks:
    """``n_items`` and ``chunk_items`` from ``attrs``, the attributes the store checked
    when it opened (the keystore's are authenticated by their MAC)."""

    attrs: dict[str, Any]

    @property
    def n_items(self) -> int:
        return int(self.attrs["n_items"])

    @property
    def chunk_items(self) -> int:
        return int(self.attrs["chunk_items"])
