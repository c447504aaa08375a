"""Publication copies a finished public store whole, checked, with a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imambig.config import EncodeConfig
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob, Plan
from imambig.stages.publish import MANIFEST, publish, verify_publication
from imambig.stores.location import Location


def _encoded(images: Location, model: Location, tmp_path: Path) -> Plan:
    job = EncodeJob(images=images, model=model, public_root=Location(str(tmp_path / "public")),
                    keys_root=Location(str(tmp_path / "keys")),
                    config=EncodeConfig(region_items=128))
    return run_encode(job, SerialRegions(), progress=False).plan


def test_publish_verify_and_detect_tampering(synthetic_store, tiny_model, tmp_path, owner_env):
    plan = _encoded(synthetic_store, tiny_model, tmp_path)
    published = Location(str(tmp_path / "published"))
    report = publish(plan.public, published)
    assert report.copied == report.objects > 5
    manifest = json.loads(Path(report.manifest.url).read_text())
    assert manifest["n_items"] == 300 and manifest["version"] == plan.version
    assert not any("keys" in e["path"] or "_state" in e["path"] for e in manifest["objects"])
    assert verify_publication(report.target) == []
    again = publish(plan.public, published)
    assert again.copied == 0  # idempotent

    chunk = Path(report.target.url, "values", "c", "0", "0", "0")
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\x00")
    assert verify_publication(report.target) == ["checksum mismatch values/c/0/0/0"]
    Path(report.manifest.url).unlink()
    assert "no MANIFEST.json" in verify_publication(report.target)[0]


def test_an_incomplete_store_is_not_published(synthetic_store, tiny_model, tmp_path, owner_env):
    plan = _encoded(synthetic_store, tiny_model, tmp_path)
    meta = Path(plan.public.url, "zarr.json")
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    (Path(plan.public.url) / "zarr.json").touch()
    with pytest.raises(ValueError, match="not marked complete"):
        publish(plan.public, Location(str(tmp_path / "published")))
    assert not (tmp_path / "published" / plan.version / MANIFEST).exists()
