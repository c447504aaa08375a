"""Publication copies a finished public store whole, checked, with a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imambig.config import EncodeConfig
from imambig.stages.encode_driver import run_encode
from imambig.stages.encode_regions import EncodeJob
from imambig.stages.publish import MANIFEST, publish, verify_publication


def test_publish_verify_and_detect_tampering(synthetic_store, tiny_model, tmp_path, owner_env):
    job = EncodeJob(images=synthetic_store, model=tiny_model,
                    public_root=str(tmp_path / "public"), keys_root=str(tmp_path / "keys"),
                    config=EncodeConfig(chunk_items=128))
    plan = run_encode(job, n_workers=1, progress=False).plan
    report = publish(plan.public_url, str(tmp_path / "published"))
    assert report.copied == report.objects > 5
    manifest = json.loads(Path(report.manifest).read_text())
    assert manifest["n_items"] == 300 and manifest["version"] == plan.version
    assert not any("keys" in e["path"] or "_state" in e["path"] for e in manifest["objects"])
    assert verify_publication(report.target) == []
    again = publish(plan.public_url, str(tmp_path / "published"))
    assert again.copied == 0  # idempotent

    chunk = Path(report.target, "values", "c", "0", "0", "0")
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\x00")
    assert verify_publication(report.target) == ["checksum mismatch values/c/0/0/0"]
    Path(report.manifest).unlink()
    assert "no MANIFEST.json" in verify_publication(report.target)[0]


def test_an_incomplete_store_is_not_published(synthetic_store, tiny_model, tmp_path, owner_env):
    job = EncodeJob(images=synthetic_store, model=tiny_model,
                    public_root=str(tmp_path / "public"), keys_root=str(tmp_path / "keys"),
                    config=EncodeConfig(chunk_items=128))
    plan = run_encode(job, n_workers=1, progress=False).plan
    meta = Path(plan.public_url, "zarr.json")
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    (Path(plan.public_url) / "zarr.json").touch()
    with pytest.raises(ValueError, match="not marked complete"):
        publish(plan.public_url, str(tmp_path / "published"), storage_options=None)
    assert not (tmp_path / "published" / plan.version / MANIFEST).exists()
