"""Store versions on S3 (SeaweedFS): `versions` lists each (model, k', precision, items,
current), `prune` deletes old ones after the grace period, both stores together, never
the current one or one whose lease a run holds."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from imambig.cli import main
from imambig.config import PRESETS, EncodeConfig, TrainConfig
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.train import train
from imambig.stages.versions import lease_location, list_versions, prune
from imambig.stores.lease import Lease
from imambig.stores.location import Location


@pytest.fixture
def two_versions(s3_server, synthetic_store, tiny_model, tmp_path: Path, owner_env):
    """A collection encoded with the tiny model, then with a second model (a rotation)."""
    other = Location(str(tmp_path / "model-b"))
    train(synthetic_store, other,
          TrainConfig(model=PRESETS["tiny"], epochs=1, minutes=None, loss="bce", ema=0.0,
                      batch_size=32, num_threads=1, seed=7), progress=False)
    s3_server.start()
    tag = uuid.uuid4().hex[:12]
    opts = s3_server.storage_options()
    public = Location(f"{s3_server.create_bucket(f'pub-{tag}')}/faces", opts)
    keys = Location(f"{s3_server.create_bucket(f'keys-{tag}')}/faces", opts)
    names = []
    for model in (tiny_model, other):
        job = EncodeJob(synthetic_store, model, public, keys, EncodeConfig(region_items=128))
        names.append(run_encode(job, SerialRegions(), progress=False).plan.version)
    yield public, keys, names
    s3_server.start()
    s3_server.delete_bucket(f"pub-{tag}")
    s3_server.delete_bucket(f"keys-{tag}")


def test_versions_lists_both_and_prune_removes_the_old_one_after_grace(two_versions,
                                                                      capsys) -> None:
    public, keys, (old, new) = two_versions
    found = {v.name: v for v in list_versions(public, keys)}
    assert set(found) == {old, new}
    assert found[new].current and not found[old].current
    assert all(v.complete and v.items == 300 and v.in_public and v.in_keys
               and v.k_public == 2 * v.k_public // 2 and v.precision != "?"
               for v in found.values())
    assert found[old].model_id in old and found[new].model_id in new
    opts = ["--storage-options", json.dumps(public.storage_options)]
    assert main(["versions", "--public", public.url, "--keys", keys.url, *opts]) == 0
    out = capsys.readouterr().out
    assert old in out and new in out and "current" in out

    # within the grace period: nothing goes
    assert prune(public, keys, grace_days=7) == []
    # a run holding the old version's lease keeps it
    with Lease(lease_location(keys, old)):
        assert list_versions(public, keys)[[v.name for v in list_versions(public, keys)]
                                           .index(old)].leased
        assert prune(public, keys, grace_days=0) == []
    assert prune(public, keys, grace_days=0, dry_run=True) == [old]
    assert public.join(old).exists() and keys.join(old).exists()
    assert main(["prune", "--public", public.url, "--keys", keys.url, "--grace-days", "0",
                 *opts]) == 0
    assert "deleted 1 versions" in capsys.readouterr().out
    assert not public.join(old, "zarr.json").exists()
    assert not keys.join(old, "zarr.json").exists()
    assert [v.name for v in list_versions(public, keys)] == [new]
    # the current version is never pruned
    assert prune(public, keys, grace_days=0) == []
    assert public.join(new).exists() and keys.join(new).exists()
