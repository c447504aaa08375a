"""Reading bytes that strangers or storage providers wrote: never more than a limit,
never a foreign exception.

Every reader of outside input (grants, keys, owner-key files, model headers, pointers,
leases, markers, noise fits) goes through these two functions, so a file that claims to
be huge, or JSON nested a million deep, ends as an :class:`~imambig.errors.FormatError`
naming the input, after reading at most ``limit + 1`` bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imambig.errors import FormatError

# What the project's own small documents (pointers, leases, markers, grant bodies,
# Zarr metadata) can reach; anything larger was not written by imambig.
JSON_LIMIT = 1 << 20


def read_file(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of the local file ``path``, refused (``FormatError``) past ``limit``
    bytes without reading more than ``limit + 1``."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FormatError(f"{what} {path} is larger than {limit:,} bytes; refused")
    return data


def parse_json(data: bytes | str, what: str, limit: int = JSON_LIMIT,
               error: type[FormatError] = FormatError) -> Any:
    """``json.loads`` of ``data`` with the failures it can have (bad UTF-8, bad syntax,
    nesting past the interpreter's recursion limit, oversize) as ``error``."""
    if len(data) > limit:
        raise error(f"{what} is larger than {limit:,} bytes; refused")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(f"{what} is not valid JSON ({type(exc).__name__}: "
                    f"{str(exc)[:120]})") from None
