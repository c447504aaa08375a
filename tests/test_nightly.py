"""The nightly run of a growing collection, through a real Prefect server: each night
appends only the new files (names sorting before, between and after the held ones),
encodes only them, validates; earlier items' records and keys stay byte-identical, a
night run twice does nothing, and the result equals one encode of the same items."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig, SecretSources
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.versions import current_version
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from infra.prefect_server import PrefectServer
from tests.fixtures_model import make_synthetic_images

REGION = 64
INGEST = {"height": 32, "width": 32, "split": "random:0.8", "workers": 1}


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with PrefectServer(tmp_path_factory.mktemp("prefect-nightly")) as server:
        yield server


def _night(prefect: PrefectServer, env: dict, params: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "flows.nightly", "--params",
                           json.dumps(params)], env={**env, **prefect.env()},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{\n") :])


def _records_and_keys(public_root: Path, keys_root: Path, provider: LocalKeyProvider
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    public = PublicStore.open(current_version(Location(str(public_root))))
    mask, values = public.read(slice(None))
    ks = Keystore.open(current_version(Location(str(keys_root))), provider)
    return mask, values, public.item_ids(), ks.entries(np.arange(public.n_items))


def test_three_nights_encode_only_what_is_new(prefect, tiny_model, tmp_path, monkeypatch):
    owner = {n: base64.b64encode(secrets.token_bytes(32)).decode()
             for n in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY")}
    for name, value in owner.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, **owner}
    provider = LocalKeyProvider.from_secrets(Secrets(SecretSources()))
    pool = tmp_path / "pool"
    make_synthetic_images(pool, 300)
    names = sorted(p.name for p in pool.iterdir())
    nights = [[n for i, n in enumerate(names) if i % 5 in (1, 2, 3)],  # 180
              [n for i, n in enumerate(names) if i % 5 == 0],  # 60, before and between
              [n for i, n in enumerate(names) if i % 5 == 4]]  # 60, between and after
    source, images = tmp_path / "source", tmp_path / "images"
    source.mkdir()
    params = {"source": str(source), "images": str(images), "model": str(tiny_model),
              "public_root": str(tmp_path / "public"), "keys_root": str(tmp_path / "keys"),
              "ingest_config": INGEST, "config": {"region_items": REGION}}
    before = None
    for new in nights:
        for name in new:
            (source / name).symlink_to(pool / name)
        summary = _night(prefect, env, params)
        assert summary["added"] == summary["encoded"] == len(new), summary
        assert summary["valid"] and summary["set_aside"] == 0
        now = _records_and_keys(tmp_path / "public", tmp_path / "keys", provider)
        if before is not None:
            held = len(before[0])
            for a, b in zip(now[:3], before[:3], strict=True):
                np.testing.assert_array_equal(a[:held], b)  # records, ids: byte-identical
            assert now[3][:held] == before[3]  # keys and record digests
        before = now
    again = _night(prefect, env, params)
    assert again["added"] == again["encoded"] == 0 and again["items"] == 300

    # One encode of the same image store (same items, same order) gives the same stores.
    one_shot = run_encode(EncodeJob(Location(str(images)), tiny_model,
                                    Location(str(tmp_path / "p1")),
                                    Location(str(tmp_path / "k1")),
                                    EncodeConfig(region_items=REGION)),
                          SerialRegions(), progress=False)
    assert one_shot.encoded == 300
    ref = _records_and_keys(tmp_path / "p1", tmp_path / "k1", provider)
    for a, b in zip(ref[:3], before[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert [(s.record, s.key) for s in ref[3]] == [(s.record, s.key) for s in before[3]]
