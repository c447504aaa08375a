"""Checks run at the start of a flow, before any work: a bad parameter fails the run
with a clear reason and nothing written."""

from __future__ import annotations

from typing import Any

from imambig.stores.location import filesystem

_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")


def check_storage_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options are parameters, and parameters are stored and shown by Prefect:
    credentials must come from the environment or a profile instead."""
    options = dict(options or {})

    def walk(d: dict[str, Any], where: str) -> None:
        for k, v in d.items():
            if any(w in k.lower() for w in _CREDENTIAL_WORDS):
                raise ValueError(
                    f"storage option {where}{k!r} looks like a credential; pass credentials "
                    "through the environment (AWS_ACCESS_KEY_ID, ...) or a profile, never as "
                    "flow parameters"
                )
            if isinstance(v, dict):
                walk(v, f"{where}{k}.")

    walk(options, "")
    return options


def check_exists(url: str, what: str, options: dict[str, Any]) -> None:
    try:
        fs, path = filesystem(url, options)
        found = fs.exists(path)
    except Exception as exc:  # an unreachable endpoint or a malformed URL
        raise ValueError(f"{what} {url!r} cannot be reached: {exc}") from None
    if not found:
        raise ValueError(f"{what} {url!r} does not exist")


def check_secret_spec(spec: str, what: str) -> None:
    from imambig.access.secrets import resolve_secret

    resolve_secret(spec)  # raises SecretError naming the spec, never the value
    del what
