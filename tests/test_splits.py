from __future__ import annotations

import numpy as np
import pytest

from imambig.stores.splits import (
    TEST,
    TRAIN,
    VAL,
    SplitSpec,
    assign_splits,
    parse_split_spec,
    split_code,
    split_counts,
)


def _items(n: int) -> list[str]:
    return [f"img/{i:06d}.jpg" for i in range(n)]


def test_parse_split_spec() -> None:
    assert parse_split_spec("official") == SplitSpec("official")
    assert parse_split_spec("random:0.8") == SplitSpec("random", 0.8)
    assert parse_split_spec("identity:1") == SplitSpec("identity", 1.0)
    assert str(parse_split_spec("identity:0.8")) == "identity:0.8"
    for bad in ("random", "random:x", "random:0", "random:1.5", "shuffle:0.5", "official:0.5"):
        with pytest.raises(ValueError):
            parse_split_spec(bad)


def test_random_split_is_deterministic_and_order_independent() -> None:
    items = _items(1000)
    a = assign_splits(items, "random:0.8", seed=3)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(items))
    b = assign_splits([items[i] for i in perm], "random:0.8", seed=3)
    # Same item -> same split, whatever the order the items arrive in.
    assert np.array_equal(a[perm], b)
    assert np.array_equal(a, assign_splits(items, "random:0.8", seed=3))
    assert not np.array_equal(a, assign_splits(items, "random:0.8", seed=4))


def test_random_split_fractions() -> None:
    splits = assign_splits(_items(10_000), "random:0.8", seed=0)
    assert splits.dtype == np.uint8
    assert split_counts(splits) == {"train": 8000, "val": 1000, "test": 1000}
    # The assignment is not a block: train items are spread over the whole id range.
    first_half = splits[:5000]
    assert 3800 < int((first_half == TRAIN).sum()) < 4200


def test_identity_split_is_disjoint_and_by_identity() -> None:
    n_ids, per_id, n_unknown = 300, 10, 50
    items = _items(n_ids * per_id + n_unknown)
    identities = np.concatenate(
        [np.repeat(np.arange(1000, 1000 + n_ids), per_id), np.full(n_unknown, -1)]
    )
    splits = assign_splits(items, "identity:0.8", seed=1, identities=identities)

    known = identities >= 0
    train_ids = set(identities[known & (splits == TRAIN)].tolist())
    other_ids = set(identities[known & (splits != TRAIN)].tolist())
    assert not train_ids & other_ids
    val_ids = set(identities[known & (splits == VAL)].tolist())
    test_ids = set(identities[known & (splits == TEST)].tolist())
    assert not val_ids & test_ids
    # 350 groups (300 identities + 50 unknown items, each a group of its own).
    n_groups = len(train_ids) + len(val_ids) + len(test_ids) + n_unknown
    assert n_groups == 350
    train_groups = len(train_ids) + int((splits[~known] == TRAIN).sum())
    assert train_groups == 280  # round(0.8 * 350)
    # Unknown items are not all put together.
    assert len(set(splits[~known].tolist())) == 3


def test_identity_split_deterministic_under_reordering() -> None:
    items = _items(200)
    identities = np.arange(200) // 4
    perm = np.random.default_rng(5).permutation(200)
    a = assign_splits(items, "identity:0.5", seed=9, identities=identities)
    b = assign_splits(
        [items[i] for i in perm], "identity:0.5", seed=9, identities=identities[perm]
    )
    assert np.array_equal(a[perm], b)


def test_official_split_uses_partition() -> None:
    items = ["000001.jpg", "000002.jpg", "000003.jpg"]
    partition = {"000001.jpg": 2, "000002.jpg": 0, "000003.jpg": 1, "000004.jpg": 0}
    splits = assign_splits(items, "official", partition=partition)
    assert splits.tolist() == [TEST, TRAIN, VAL]


def test_official_split_errors() -> None:
    with pytest.raises(ValueError, match="needs a partition file"):
        assign_splits(["a.jpg"], "official")
    with pytest.raises(ValueError, match="no partition entry"):
        assign_splits(["a.jpg", "b.jpg"], "official", partition={"a.jpg": 0})
    with pytest.raises(ValueError, match="0, 1 or 2"):
        assign_splits(["a.jpg"], "official", partition={"a.jpg": 7})


def test_full_train_fraction_and_duplicates() -> None:
    assert split_counts(assign_splits(_items(10), "random:1")) == {"train": 10, "val": 0, "test": 0}
    with pytest.raises(ValueError, match="unique"):
        assign_splits(["a", "a"], "random:0.5")


def test_split_code() -> None:
    assert [split_code(s) for s in ("train", "val", "test")] == [0, 1, 2]
    with pytest.raises(ValueError):
        split_code("all")
