"""Append-only image stores: ingest into an existing store adds what it has not seen at
the end, never moves or changes a held item, reports changed and duplicate files, keeps
every held identity's split, and survives an append killed half-way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from imambig.cli import main
from imambig.config import IngestConfig
from imambig.stages.ingest import ingest
from imambig.stores.image_store import ImageStore, ImageStoreWriter, open_image_store
from imambig.stores.location import Location
from imambig.stores.splits import extend_splits

CFG = IngestConfig(height=16, width=16, crop=32, split="identity:0.5", chunk_items=4,
                   workers=1)


def _face(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(path)


def _celeba(root: Path, names: dict[str, int]) -> None:
    """A CelebA-shaped source: files named -> identity, every one in the partition."""
    for name in names:
        _face(root / "img_align_celeba" / name, int(name.split(".")[0]))
    (root / "list_eval_partition.txt").write_text("".join(f"{n} 0\n" for n in names))
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, i in names.items()))


def _snapshot(store: ImageStore) -> dict[str, np.ndarray]:
    return {"images": store.read(slice(None)), "ids": store.item_ids(),
            "splits": store.splits(), "identity": store.identities(),
            "digests": store.source_digests()}


def _night(src: Path, out: Path) -> tuple[int, ImageStore]:
    report = ingest(Location(str(src)), Location(str(out)), CFG)
    return report.written, open_image_store(Location(str(out)))


def test_appends_keep_every_held_item_where_and_as_it_was(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    first = {f"{i:06d}.jpg": i // 3 for i in range(10, 40, 2)}  # 15 faces, 5 people
    _celeba(src, first)
    n, store = _night(src, out)
    assert n == 15
    before = _snapshot(store)
    # new names sorting before, between and after the held ones; people old and new
    more = {"000001.jpg": 3, "000021.jpg": 7, "000023.jpg": 50, "000099.jpg": 51}
    _celeba(src, {**first, **more})
    n, store = _night(src, out)
    assert n == 4 and store.n_items == 19
    after = _snapshot(store)
    for name, held in before.items():
        np.testing.assert_array_equal(after[name][:15], held, err_msg=name)
    assert after["ids"][15:].tolist() == sorted(more)  # at the end, in name order
    # a held person keeps their split; the appended images are the files' own
    split_of = dict(zip(before["identity"].tolist(), before["splits"].tolist(), strict=True))
    for i in range(15, 19):
        if int(after["identity"][i]) in split_of:
            assert after["splits"][i] == split_of[int(after["identity"][i])]
    one_shot = tmp_path / "one-shot"
    ingest(Location(str(src)), Location(str(one_shot)), CFG)
    ref = open_image_store(Location(str(one_shot)))
    order = [ref.item_ids().tolist().index(i) for i in after["ids"].tolist()]
    np.testing.assert_array_equal(ref.read(order), after["images"])
    np.testing.assert_array_equal(ref.source_digests()[order], after["digests"])
    # the same night again adds nothing and changes nothing
    n, store = _night(src, out)
    assert n == 0
    for name, value in _snapshot(store).items():
        np.testing.assert_array_equal(value, after[name], err_msg=name)


def test_changed_and_duplicate_files_are_reported_not_added(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _celeba(src, {"000001.jpg": 1, "000002.jpg": 2})
    _night(src, out)
    before = _snapshot(open_image_store(Location(str(out))))
    _face(src / "img_align_celeba" / "000002.jpg", 77)  # other bytes under a held name
    shutil.copy(src / "img_align_celeba" / "000001.jpg", src / "img_align_celeba" / "000003.jpg")
    (src / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 0\n")
    report = ingest(Location(str(src)), Location(str(out)), CFG)
    assert report.written == 0
    reasons = {r["item"]: (r["reason"], r["detail"]) for r in report.set_aside}
    assert reasons["000002.jpg"][0] == "changed"
    assert reasons["000003.jpg"] == ("duplicate", "the same bytes as held item 000001.jpg")
    for name, value in _snapshot(open_image_store(Location(str(out)))).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_a_killed_append_is_cut_back_and_done_again(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    names = {f"{i:06d}.jpg": i for i in range(1, 8)}
    _celeba(src, names)
    _night(src, out)
    held = _snapshot(open_image_store(Location(str(out))))
    _celeba(src, {**names, **{f"{i:06d}.jpg": i for i in range(8, 14)}})
    # an append that died after growing the store and writing junk into its tail
    w = ImageStoreWriter.open(Location(str(out)))
    start = w.begin_append()
    w.resize(start + 6)
    w.write_tail(start, np.full((6, 16, 16, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="not completely written"):
        open_image_store(Location(str(out)))
    n, store = _night(src, out)
    assert n == 6 and store.n_items == 13
    clean = tmp_path / "clean"
    ingest(Location(str(src)), Location(str(clean)), CFG)
    np.testing.assert_array_equal(store.read(slice(None)),
                                  open_image_store(Location(str(clean))).read(slice(None)))
    np.testing.assert_array_equal(store.read(slice(0, 7)), held["images"])
    assert "append_from" not in store.attrs and store.attrs["complete"] is True


def test_appends_keep_the_store_settings_and_refuse_v1_stores(tmp_path: Path,
                                                              capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _celeba(src, {"000001.jpg": 1})
    _night(src, out)
    with pytest.raises(ValueError, match=r"size \(16, 16\) \(asked: \(32, 32\)\)"):
        ingest(Location(str(src)), Location(str(out)),
               IngestConfig(height=32, width=32, crop=32, split="identity:0.5",
                            workers=1))
    # the command line takes the store's settings where no flag is given
    _celeba(src, {"000001.jpg": 1, "000002.jpg": 2})
    assert main(["ingest", str(src), "--out", str(out), "--workers", "1"]) == 0
    assert "added 1 images" in capsys.readouterr().out
    assert open_image_store(Location(str(out))).n_items == 2
    # a store written before digests were kept reads, but is not appended to
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["schema"] = "imambig.image-store/1"
    (out / "zarr.json").write_text(json.dumps(meta))
    zarr.open_group(str(out), mode="r+")  # still a group
    shutil.rmtree(out / "source_digest")
    assert open_image_store(Location(str(out))).source_digests() is None
    with pytest.raises(ValueError, match="re-ingest it once with --overwrite"):
        _night(src, out)


def test_new_people_split_by_the_keyed_hash_held_people_keep_theirs() -> None:
    held_ids = [f"h{i}" for i in range(6)]
    held_people = np.array([1, 1, 2, 2, 3, -1])
    held_splits = np.array([2, 2, 0, 0, 1, 1], np.uint8)
    new = [f"n{i}" for i in range(400)]
    people = np.array([1, 2, 3, *range(100, 497)])
    got = extend_splits(new, "identity:0.8", held_ids=held_ids, held_identities=held_people,
                        held_splits=held_splits, seed=0, identities=people)
    assert got[:3].tolist() == [2, 0, 1]
    share = np.bincount(got[3:], minlength=3) / len(got[3:])
    assert abs(share[0] - 0.8) < 0.07 and abs(share[1] - share[2]) < 0.07
    again = extend_splits(new[::-1], "identity:0.8", held_ids=held_ids,
                          held_identities=held_people, held_splits=held_splits, seed=0,
                          identities=people[::-1])
    np.testing.assert_array_equal(again, got[::-1])  # a function of the key, not the order
