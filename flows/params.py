"""Checks run at the start of a flow, before any work: a bad parameter fails the run
with a clear reason and nothing written."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from imambig.stores.location import Location

_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")


def check_location(location: Location, what: str, *, must_exist: bool = False) -> None:
    """Storage options are parameters, and parameters are stored and shown by Prefect:
    credentials must come from the environment or a profile instead. With
    ``must_exist``, the location must also be reachable and hold something."""

    def walk(d: dict[str, Any], where: str) -> None:
        for k, v in d.items():
            if any(w in k.lower() for w in _CREDENTIAL_WORDS):
                raise ValueError(
                    f"storage option {where}{k!r} of the {what} looks like a credential; pass "
                    "credentials through the environment (AWS_ACCESS_KEY_ID, ...) or a "
                    "profile, never as flow parameters"
                )
            if isinstance(v, dict):
                walk(v, f"{where}{k}.")

    walk(location.storage_options, "")
    if not must_exist:
        return
    try:
        found = location.exists()
    except Exception as exc:  # an unreachable endpoint or a malformed URL
        raise ValueError(f"{what} {location.url!r} cannot be reached: {exc}") from None
    if not found:
        raise ValueError(f"{what} {location.url!r} does not exist")


def main_with_params(flow: Callable[..., Any], doc: str | None) -> None:
    """``python -m flows.<name> --params '{...}'``: run ``flow`` once with those
    parameters and print its result as JSON."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", required=True, help="JSON object of the flow's parameters")
    a = p.parse_args()
    print(json.dumps(flow(**json.loads(a.params)), indent=1))
