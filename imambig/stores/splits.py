"""Train/val/test assignment: pure, seeded and independent of processing order.

Specs:

- ``official``: the source's own partition (CelebA's ``list_eval_partition.txt``).
- ``random:<frac>``: each item independently; ``frac`` of the items go to train.
- ``identity:<frac>``: whole identities; ``frac`` of the identities go to train, so no
  person appears both in train and in val/test. Items of unknown identity count as an
  identity of their own.

The remainder (1 - frac) is divided evenly between val and test. Items (or identities)
are ranked by a keyed hash of ``(seed, key)``, so the result depends only on the seed and
on the set of keys: not on their order, on worker counts or on batch sizes.

Items appended to a store later (``extend_splits``) never move an item already there:
an identity the store holds keeps its split, and a new one goes by the same keyed hash
read as a number in [0, 1) against the fractions (exact for the first ingest, in
expectation for appends).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2
UNKNOWN_IDENTITY = -1

SplitKind = Literal["official", "random", "identity"]

NO_PARTITION = (
    "split 'official' needs a partition file (CelebA's list_eval_partition.txt) and this "
    "source has none; use --split random:<train fraction> or identity:<train fraction>"
)


@dataclass(frozen=True)
class SplitSpec:
    kind: SplitKind
    train_fraction: float | None = None  # None for "official"

    def __str__(self) -> str:
        return self.kind if self.train_fraction is None else f"{self.kind}:{self.train_fraction:g}"


def parse_split_spec(spec: str) -> SplitSpec:
    """Parse ``official`` | ``random:<frac>`` | ``identity:<frac>`` (0 < frac <= 1)."""
    kind, _, frac_text = spec.strip().partition(":")
    if kind == "official":
        if frac_text:
            raise ValueError(f"split {spec!r}: 'official' takes no fraction")
        return SplitSpec("official")
    if kind not in ("random", "identity"):
        raise ValueError(
            f"unknown split {spec!r}; use official, random:<train fraction> or "
            "identity:<train fraction>"
        )
    try:
        frac = float(frac_text)
    except ValueError:
        raise ValueError(
            f"split {spec!r}: expected {kind}:<train fraction>, e.g. {kind}:0.8"
        ) from None
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"split {spec!r}: the train fraction must be in (0, 1]")
    return SplitSpec(kind, frac)  # type: ignore[arg-type]


def _key_digest(key: str, seed: int) -> bytes:
    """The seeded keyed hash that ranks (and, for appends, places) a key."""
    salt = seed.to_bytes(8, "little", signed=True)
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8, salt=salt).digest()


def _rank_keys(keys: Sequence[str], seed: int) -> np.ndarray:
    """A seeded pseudo-random order of ``keys`` that depends only on the set of keys."""
    digests = [_key_digest(k, seed) for k in keys]
    # Ties (astronomically unlikely) are broken by the key itself, keeping determinism.
    return np.array(
        sorted(range(len(keys)), key=lambda i: (digests[i], keys[i])), dtype=np.int64
    )


def _unit(key: str, seed: int) -> float:
    """The keyed hash of ``_rank_keys`` as a number in [0, 1) (same order)."""
    return int.from_bytes(_key_digest(key, seed), "big") / 2**64


def _divide(n: int, train_fraction: float) -> tuple[int, int]:
    """How many of ``n`` ranked units go to train and to val (the rest is test)."""
    n_train = round(n * train_fraction)
    rest = n - n_train
    return n_train, n_train + (rest + 1) // 2


def _assign_ranked(keys: Sequence[str], train_fraction: float, seed: int) -> np.ndarray:
    order = _rank_keys(keys, seed)
    n_train, n_train_val = _divide(len(keys), train_fraction)
    out = np.empty(len(keys), dtype=np.uint8)
    out[order[:n_train]] = TRAIN
    out[order[n_train:n_train_val]] = VAL
    out[order[n_train_val:]] = TEST
    return out


def assign_splits(
    item_ids: Sequence[str],
    spec: SplitSpec | str,
    *,
    seed: int = 0,
    identities: Sequence[int] | np.ndarray | None = None,
    partition: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Split code (0 train, 1 val, 2 test) of each item, as ``uint8`` of ``len(item_ids)``.

    ``identities`` (same length, ``-1`` unknown) is used by ``identity:`` specs;
    ``partition`` (item id -> 0/1/2) by ``official``.
    """
    spec = parse_split_spec(spec) if isinstance(spec, str) else spec
    n = len(item_ids)
    if len(set(item_ids)) != n:
        raise ValueError("item ids must be unique")

    if spec.kind == "official":
        if partition is None:
            raise ValueError(NO_PARTITION)
        missing = [i for i in item_ids if i not in partition]
        if missing:
            raise ValueError(
                f"split 'official': {len(missing)} items have no partition entry, "
                f"e.g. {missing[0]!r}"
            )
        values = [partition[i] for i in item_ids]
        bad = sorted({v for v in values if v not in (TRAIN, VAL, TEST)})
        if bad:
            raise ValueError(f"split 'official': partition values must be 0, 1 or 2, got {bad}")
        return np.array(values, dtype=np.uint8)

    assert spec.train_fraction is not None
    if spec.kind == "random":
        return _assign_ranked(list(item_ids), spec.train_fraction, seed)

    # identity: rank identities, then give every item its identity's split.
    ids = _identities(identities, n)
    group_keys = _group_keys(item_ids, ids)
    unique_keys = sorted(set(group_keys))
    unique_splits = _assign_ranked(unique_keys, spec.train_fraction, seed).tolist()
    group_split = dict(zip(unique_keys, unique_splits, strict=True))
    return np.array([group_split[k] for k in group_keys], dtype=np.uint8)


def _identities(identities: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    ids = (np.full(n, UNKNOWN_IDENTITY, dtype=np.int64) if identities is None
           else np.asarray(identities, dtype=np.int64))
    if ids.shape != (n,):
        raise ValueError(f"identities has shape {ids.shape}, expected ({n},)")
    return ids


def _group_keys(item_ids: Sequence[str], ids: np.ndarray) -> list[str]:
    # Unknown identities become pseudo-identities of their own, keyed by the item id
    # (a different namespace from real identities, so they can never collide).
    return [f"item:{item}" if ident == UNKNOWN_IDENTITY else f"id:{ident}"
            for item, ident in zip(item_ids, ids.tolist(), strict=True)]


def extend_splits(
    item_ids: Sequence[str],
    spec: SplitSpec | str,
    *,
    held_ids: Sequence[str],
    held_identities: np.ndarray,
    held_splits: np.ndarray,
    seed: int = 0,
    identities: Sequence[int] | np.ndarray | None = None,
    partition: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Split codes of items appended to a store that holds ``held_*`` already: an
    identity (``identity:``) the store holds keeps its split, anything new goes by the
    keyed hash against the fractions; ``official`` reads the partition as before."""
    spec = parse_split_spec(spec) if isinstance(spec, str) else spec
    n = len(item_ids)
    if spec.kind == "official":
        return assign_splits(item_ids, spec, seed=seed, partition=partition)
    assert spec.train_fraction is not None
    if spec.kind == "random":
        keys = list(item_ids)
        known: dict[str, int] = {}
    else:
        keys = _group_keys(item_ids, _identities(identities, n))
        known = dict(zip(_group_keys(held_ids, np.asarray(held_identities, np.int64)),
                         np.asarray(held_splits).tolist(), strict=True))
    train = spec.train_fraction
    val = train + (1 - train) / 2
    out = np.empty(n, dtype=np.uint8)
    for i, key in enumerate(keys):
        if key in known:
            out[i] = known[key]
        else:
            u = _unit(key, seed)
            out[i] = TRAIN if u < train else VAL if u < val else TEST
    return out


def split_counts(splits: np.ndarray) -> dict[str, int]:
    """``{"train": n, "val": n, "test": n}`` of a split-code array."""
    counts = np.bincount(np.asarray(splits, dtype=np.int64), minlength=len(SPLIT_NAMES))
    return {name: int(c) for name, c in zip(SPLIT_NAMES, counts, strict=False)}


def split_code(name: str) -> int:
    """0/1/2 of ``"train"``/``"val"``/``"test"``."""
    try:
        return SPLIT_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown split {name!r}; choose one of {list(SPLIT_NAMES)}") from None
