"""Publication: copy a finished public store to a publication location, with a manifest.

Only a complete, valid public store is published. Every object is copied, then read back
and checked against the SHA-256 of its source; ``MANIFEST.json`` (object list, sizes,
checksums, model id, item count) is written last, so its presence means the copy is
whole. Re-publishing the same store skips objects whose checksum already matches.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from imambig.stores.location import filesystem, join, read_bytes, write_bytes
from imambig.stores.public_store import PublicStore
from storage_schemas.validate import validate

MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class PublishReport:
    source: str
    target: str
    objects: int
    copied: int
    bytes: int
    manifest: str

    def summary(self) -> str:
        return (f"published {self.source} -> {self.target}: {self.objects} objects "
                f"({self.bytes:,} bytes, {self.copied} copied now); manifest {self.manifest}")


def publish(
    source: str,
    target_root: str,
    storage_options: dict | None = None,
    target_options: dict | None = None,
) -> PublishReport:
    """Copy public store ``source`` under ``target_root`` (same version name)."""
    report = validate(source, storage_options)
    if not report.ok:
        raise ValueError(f"refusing to publish an invalid store:\n{report.summary()}")
    store = PublicStore.open(source, storage_options)
    version = source.rstrip("/").rsplit("/", 1)[-1]
    target = join(target_root, version)
    sfs, spath = filesystem(source, storage_options)
    tfs, tpath = filesystem(target, target_options if target_options is not None
                            else storage_options)
    entries, copied, total = [], 0, 0
    for obj in sorted(sfs.find(spath)):
        rel = obj[len(spath) :].lstrip("/")
        data = sfs.cat_file(obj)
        digest = hashlib.sha256(data).hexdigest()
        dest = f"{tpath}/{rel}"
        existing = tfs.cat_file(dest) if tfs.exists(dest) else None
        if existing is None or hashlib.sha256(existing).hexdigest() != digest:
            write_bytes(join(target, rel), data, target_options or storage_options)
            back = tfs.cat_file(dest)
            if hashlib.sha256(back).hexdigest() != digest:
                raise OSError(f"{join(target, rel)}: read-back checksum mismatch after copy")
            copied += 1
        entries.append({"path": rel, "bytes": len(data), "sha256": digest})
        total += len(data)
    manifest = {
        "format": "imambig.publication/1",
        "version": version,
        "store_id": store.attrs["store_id"],
        "model_id": store.attrs["model_id"],
        "n_items": store.n_items,
        "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "objects": entries,
    }
    murl = join(target, MANIFEST)
    write_bytes(murl, json.dumps(manifest, indent=1).encode(), target_options or storage_options)
    return PublishReport(source, target, len(entries), copied, total, murl)


def verify_publication(target: str, storage_options: dict | None = None) -> list[str]:
    """Re-check every object of a publication against its manifest; list the problems."""
    raw = read_bytes(join(target, MANIFEST), storage_options)
    if raw is None:
        return [f"{target} has no {MANIFEST} (unpublished or interrupted)"]
    fs, path = filesystem(target, storage_options)
    problems = []
    for e in json.loads(raw)["objects"]:
        p = f"{path}/{e['path']}"
        if not fs.exists(p):
            problems.append(f"missing {e['path']}")
        elif hashlib.sha256(fs.cat_file(p)).hexdigest() != e["sha256"]:
            problems.append(f"checksum mismatch {e['path']}")
    return problems
