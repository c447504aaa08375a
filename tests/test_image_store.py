from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from imambig.stores.image_store import (
    SCHEMA,
    ImageStoreWriter,
    open_image_store,
    store_state,
)
from imambig.stores.location import Location

N, H, W, CHUNK = 10, 6, 5, 4


def _images(n: int = N) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def _write(location: Location, images: np.ndarray, finish: bool = True) -> ImageStoreWriter:
    writer = ImageStoreWriter.create(
        location, n_items=len(images), height=H, width=W, chunk_items=CHUNK,
        attrs={"source": "test", "split_spec": "random:0.5", "seed": 0, "crop": None},
    )
    # Region by region, as independent writers would.
    for start in range(0, len(images), CHUNK):
        ImageStoreWriter.open(location).write_images(start, images[start : start + CHUNK])
    writer.write_labels(
        np.array([f"dir/{i}.png" for i in range(len(images))]),
        np.array([0, 1, 2, 0, 0, 1, 2, 0, 0, 0][: len(images)], dtype=np.uint8),
        np.arange(len(images)) - 1,
        np.array([f"{i:064x}" for i in range(len(images))]),
    )
    if finish:
        writer.finish(set_aside=0)
    return writer


def test_round_trip(tmp_path: Path) -> None:
    location = Location(str(tmp_path / "store"))
    images = _images()
    _write(location, images)

    store = open_image_store(location)
    assert (store.n_items, store.height, store.width, len(store)) == (N, H, W, N)
    assert store.attrs["schema"] == SCHEMA
    assert store.attrs["n_items"] == N
    assert store.attrs["split_names"] == ["train", "val", "test"]
    assert store.attrs["complete"] is True
    assert np.array_equal(store.read(slice(None)), images)
    assert np.array_equal(store.read(slice(2, 9, 3)), images[2:9:3])
    idx = np.array([9, 0, 5, 5, -1, 3])
    assert np.array_equal(store.read(idx), images[idx])
    assert np.array_equal(store.read([7]), images[[7]])
    assert store.read(np.array([], dtype=np.int64)).shape == (0, H, W, 3)
    with pytest.raises(IndexError):
        store.read([N])

    assert store.item_ids().tolist() == [f"dir/{i}.png" for i in range(N)]
    assert store.identities().tolist() == list(range(-1, N - 1))
    assert store.splits().dtype == np.uint8
    assert store.indices("train").tolist() == [0, 3, 4, 7, 8, 9]
    assert store.indices("val").tolist() == [1, 5]
    assert store.indices("test").tolist() == [2, 6]
    assert store.indices("all").tolist() == list(range(N))
    with pytest.raises(ValueError):
        store.indices("holdout")

    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone.read([4]), images[[4]])


def test_resize_keeps_written_items(tmp_path: Path) -> None:
    location = Location(str(tmp_path / "store"))
    images = _images(8)
    writer = ImageStoreWriter.create(location, n_items=12, height=H, width=W, chunk_items=CHUNK)
    writer.write_images(0, images[:4])
    writer.resize(6)
    writer.write_images(4, images[4:6])  # a short last region may end at n_items
    writer.write_labels(np.array(list("abcdef")), np.zeros(6, np.uint8), np.zeros(6, np.int64),
                        np.array(["0" * 64] * 6))
    writer.finish()
    store = open_image_store(location)
    assert store.n_items == 6
    assert store.attrs["n_items"] == 6
    assert np.array_equal(store.read(slice(None)), images[:6])


def test_regions_must_be_chunk_aligned(tmp_path: Path) -> None:
    writer = ImageStoreWriter.create(
        Location(str(tmp_path / "s")), n_items=N, height=H, width=W, chunk_items=CHUNK
    )
    with pytest.raises(ValueError, match="aligned"):
        writer.write_images(2, _images(4))
    with pytest.raises(ValueError, match="aligned"):
        writer.write_images(0, _images(3))
    with pytest.raises(ValueError, match="uint8"):
        writer.write_images(0, _images(4).astype(np.float32))


def test_incomplete_store_refuses_to_open(tmp_path: Path) -> None:
    location = Location(str(tmp_path / "store"))
    _write(location, _images(), finish=False)
    assert store_state(location) == "incomplete"
    with pytest.raises(ValueError, match="not completely written; re-run ingest"):
        open_image_store(location)


def test_store_state_and_missing(tmp_path: Path) -> None:
    assert store_state(Location(str(tmp_path / "nothing"))) == "absent"
    (tmp_path / "empty").mkdir()
    assert store_state(Location(str(tmp_path / "empty"))) == "absent"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert store_state(Location(str(tmp_path / "other"))) == "foreign"
    location = Location(str(tmp_path / "store"))
    _write(location, _images())
    assert store_state(location) == "complete"
    with pytest.raises(FileNotFoundError):
        open_image_store(Location(str(tmp_path / "nothing")))


def test_memory_url_round_trip() -> None:
    location = Location("memory://imambig-test-image-store/store")
    images = _images()
    try:
        _write(location, images)
        store = open_image_store(location)
        assert np.array_equal(store.read(np.array([8, 1])), images[[8, 1]])
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/imambig-test-image-store", recursive=True)
