"""Near-duplicates of stored items, from their source photos or, where the sources are
out of reach, from the stored images standing in for them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from imambig.config import IngestConfig
from imambig.stages.ingest import ingest
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.study.near_duplicates import NearDuplicates
from tests.fixtures_model import make_synthetic_images


def _store(root: Path) -> Location:
    make_synthetic_images(root / "src", 6, size=40)
    out = Location(str(root / "images"))
    ingest(Location(str(root / "src")), out,
           IngestConfig(height=32, width=32, split="random:0.5", workers=1))
    return out


def test_near_duplicates_from_the_sources(tmp_path: Path) -> None:
    store = open_image_store(_store(tmp_path))
    near = NearDuplicates(store)
    assert near.from_sources
    got = near.images(np.arange(4), "jpeg90")
    assert got.shape == (4, 32, 32, 3) and got.dtype == np.uint8


def test_stored_images_stand_in_for_sources_out_of_reach(tmp_path: Path) -> None:
    location = _store(tmp_path)
    shutil.rmtree(tmp_path / "src")  # e.g. a store whose relative source path no longer resolves
    store = open_image_store(location)
    near = NearDuplicates(store)
    assert not near.from_sources
    idx = np.array([0, 3, 5])
    got = near.images(idx, "jpeg90")
    assert got.shape == (3, 32, 32, 3) and got.dtype == np.uint8
    # a high-quality re-save of the stored image: close to it, not equal
    diff = np.abs(got.astype(int) - store.read(idx).astype(int)).mean()
    assert 0 < diff < 8
    assert np.array_equal(near.images(idx, "copy"), store.read(idx))
