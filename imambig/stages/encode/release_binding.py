"""One mechanism per model: a model's codes are published with one set of fakes, ever.

Two public records of the same code with different fakes give the key away: the real
entries are the ones both records share. Fakes are a function of the code and of
everything listed in ``Mechanism`` (the noise fit, k', the noise design, the value
quantizer, the encoder's precision and the owner secret), so publishing a model's codes
again with any of these changed (a refit, a rotated secret, another k', a design bump,
another precision) is a second release with other fakes. The first publication of a
model under a key root records its mechanism there (``_releases/<model id>.json``, next
to the keystores: private); every later encode of that model under the same roots must
match it, and the versions already under both roots are checked too.

A model fine-tuned from another keeps codes close to its ancestors' while its decoy map
(seeded by its own id) is new: publishing an image under both is a second release that
gives most of the key away (measured: docs/privacy.md, *Measured privacy*). So a model's lineage
(``lineage`` in its metadata, written by ``imambig train --init``) is recorded too, and a
model is refused where an ancestor or a descendant was published under the same roots.
Two models trained from scratch from the same start (architecture and seed) keep
aligned codes too (measured: a second release under such a model gives recall 0.632
against 0.537 for another seed), so the start is recorded and compared as well.
The way forward after a change is a new model id trained from scratch with a new seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from imambig.errors import FormatError, ImambigError
from imambig.stores.location import Location
from imambig.untrusted import parse_json

RELEASES = "_releases"
RECORD_LIMIT = 1 << 20  # a record is under 1 kB (a long lineage: a few kB)


class ReleaseRefused(ImambigError):
    """Publishing would release a model's codes with other fakes than before."""


@dataclass(frozen=True)
class Mechanism:
    """Everything the fakes of a model's records depend on besides the image."""

    model_id: str
    k_public: int
    noise_design: int
    noise_fit_sha256: str
    value_bits: int  # mantissa bits of the public values
    precision: str  # bf16 | fp32: the encoder's arithmetic (moves ~0.3 % of supports)
    owner_fingerprint: str  # HMAC of the owner secret (Secret.fingerprint): never the secret

    def differences(self, other: Mechanism) -> list[str]:
        return [f"{f.name} {getattr(other, f.name)!r} -> {getattr(self, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_json(cls, raw: bytes, where: Location) -> Mechanism:
        try:
            d = parse_json(raw, f"release record {where}", RECORD_LIMIT)
            return cls(**{f.name: d[f.name] for f in fields(cls)})
        except (FormatError, KeyError, TypeError) as exc:
            raise ReleaseRefused(f"{where} is not a release record ({exc}); it guards the "
                                 "model's publications: restore it from a backup") from None


def record_location(keys_root: Location, model_id: str) -> Location:
    return keys_root.join(RELEASES, f"{model_id}.json")


def _refusal(mechanism: Mechanism, diffs: list[str], where: str) -> ReleaseRefused:
    return ReleaseRefused(
        f"model {mechanism.model_id} was already published ({where}) with another "
        f"mechanism: {'; '.join(diffs)}. Its records would get other fakes than before, and "
        "two releases of one code with different fakes reveal every key (the shared entries "
        "are the real ones). Encode with the same settings, secret, noise file and precision "
        "as the first release, or publish under a new model id (a model trained from "
        "scratch with a new --seed)."
    )


def family(metadata: dict) -> tuple[tuple[str, ...], str | None]:
    """What a model's metadata says of its family: its ancestors (``lineage``, written
    by ``train --init``) and a digest of where training started from scratch
    (architecture and seed; None for a fine-tuned model, which its lineage covers)."""
    lineage = metadata.get("lineage")
    ancestors = tuple(str(m) for m in lineage) if isinstance(lineage, list) else ()
    config = metadata.get("train_config")
    if not isinstance(config, dict) or config.get("init"):
        return ancestors, None
    start = {"model": config.get("model"), "seed": config.get("seed")}
    return ancestors, hashlib.sha256(json.dumps(start, sort_keys=True).encode()).hexdigest()[:16]


def _family_refusal(model_id: str, relative: str, how: str, where: str) -> ReleaseRefused:
    return ReleaseRefused(
        f"model {model_id} is {how} {relative}, which was published ({where}). A fine-tuned "
        "model's codes stay close to its family's while its fakes are new, so publishing "
        "the same images under both gives most of every key away. Publish under a model "
        "trained from scratch with a new --seed (no --init), or under different roots "
        "for a different collection.")


def check_lineage(model_id: str, lineage: tuple[str, ...], public_root: Location,
                  keys_root: Location, start: str | None = None) -> None:
    """Refuse ``model_id`` where an ancestor (``lineage``), a descendant of it, or a
    model trained from the same ``start`` (see ``family``) was published under
    these roots."""
    for ancestor in lineage:
        where = record_location(keys_root, ancestor)
        if where.exists():
            raise _family_refusal(model_id, ancestor, "fine-tuned from", f"recorded in {where}")
        if versions := published_versions(public_root, ancestor):
            raise _family_refusal(model_id, ancestor, "fine-tuned from",
                                  f"version {versions[0]} under {public_root}")
    records = keys_root.join(RELEASES)
    for name in sorted(records.names()):
        if not name.endswith(".json") or name == f"{model_id}.json":
            continue
        try:
            raw = records.join(name).read_bytes(limit=RECORD_LIMIT)
            record = parse_json(raw or b"{}", f"release record {records.join(name)}",
                                RECORD_LIMIT)
            family, other_start = record.get("lineage", []), record.get("start")
        except (FormatError, AttributeError):
            family, other_start = [], None
        if isinstance(family, list) and model_id in family:
            raise _family_refusal(model_id, name.removesuffix(".json"), "an ancestor of",
                                  f"recorded in {records.join(name)}")
        if start is not None and other_start == start:
            raise _family_refusal(model_id, name.removesuffix(".json"),
                                  "trained from the same start (architecture and seed) as",
                                  f"recorded in {records.join(name)}")


def published_versions(root: Location, model_id: str) -> list[str]:
    """Names of the store versions of ``model_id`` under ``root``."""
    return sorted(n for n in root.names() if n.startswith(f"v-{model_id}-"))


def released(keys_root: Location, model_id: str) -> Mechanism | None:
    """The mechanism ``model_id`` was first published with under ``keys_root``."""
    where = record_location(keys_root, model_id)
    raw = where.read_bytes(limit=RECORD_LIMIT)
    return None if raw is None else Mechanism.from_json(raw, where)


def check_release(mechanism: Mechanism, public_root: Location, keys_root: Location,
                  noise_fit_of: dict[str, dict], lineage: tuple[str, ...] = (),
                  start: str | None = None, record: bool = True) -> None:
    """Refuse unless ``mechanism`` is the one the model was published with under these
    roots and no relative of the model (``lineage``: its ancestors) was published there;
    with ``record``, record it on the model's first publication. ``noise_fit_of`` maps
    the version names found under the public root to their stores' ``noise_fit``
    attributes."""
    check_lineage(mechanism.model_id, lineage, public_root, keys_root, start)
    where = record_location(keys_root, mechanism.model_id)
    earlier = released(keys_root, mechanism.model_id)
    if earlier is not None and (diffs := mechanism.differences(earlier)):
        raise _refusal(mechanism, diffs, f"recorded in {where}")
    # Versions published before a record existed, or whose record was removed.
    for name, noise_fit in noise_fit_of.items():
        if noise_fit.get("sha256") != mechanism.noise_fit_sha256:
            raise _refusal(mechanism, [f"noise fit {noise_fit.get('sha256')!r} -> "
                                       f"{mechanism.noise_fit_sha256!r}"],
                           f"version {name} under {public_root}")
    if earlier is None and record:
        body = {**asdict(mechanism), "lineage": list(lineage), "start": start}
        where.write_bytes(json.dumps(body, indent=1).encode())
