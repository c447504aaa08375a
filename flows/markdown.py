"""Markdown tables for the flows' artifacts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """``header`` (blank cells stay blank: a table of names and values), its rule, and
    one line per row, each cell as ``str`` gives it."""
    head = "|" + "|".join(f" {h} " if h else " " for h in header) + "|"
    lines = [head, "|" + "---|" * len(header),
             *("| " + " | ".join(map(str, cells)) + " |" for cells in rows)]
    return "\n".join(lines) + "\n"
