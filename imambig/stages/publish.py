"""Publication: copy a finished public store to a publication location, with a manifest.

Only a complete, valid public store is published. Every object is copied, then read back
and checked against the SHA-256 of its source; ``MANIFEST.json`` (object list, sizes,
checksums, model id, item count) is written last, so its presence means the copy is
whole. Re-publishing the same store skips objects whose checksum already matches.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from imambig.errors import StoreFormatError
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from imambig.untrusted import parse_json
from storage_schemas.validate import validate

MANIFEST = "MANIFEST.json"
MANIFEST_LIMIT = 64 << 20  # some 150 bytes per object: ~400,000 objects
_OBJECT_PATH = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PublishReport:
    source: Location
    target: Location
    objects: int
    copied: int
    bytes: int
    manifest: Location

    def summary(self) -> str:
        return (f"published {self.source} -> {self.target}: {self.objects} objects "
                f"({self.bytes:,} bytes, {self.copied} copied now); manifest {self.manifest}")


def publish(source: Location, target_root: Location) -> PublishReport:
    """Copy public store ``source`` under ``target_root`` (same version name)."""
    report = validate(source)
    if not report.ok:
        raise ValueError(f"refusing to publish an invalid store:\n{report.summary()}")
    store = PublicStore.open(source)
    version = source.name
    target = target_root.join(version)
    sfs, spath = source.filesystem()
    tfs, tpath = target.filesystem()
    entries, copied, total = [], 0, 0
    for obj in sorted(sfs.find(spath)):
        rel = obj[len(spath) :].lstrip("/")
        data = sfs.cat_file(obj)
        digest = hashlib.sha256(data).hexdigest()
        dest = f"{tpath}/{rel}"
        existing = tfs.cat_file(dest) if tfs.exists(dest) else None
        if existing is None or hashlib.sha256(existing).hexdigest() != digest:
            target.join(rel).write_bytes(data)
            back = tfs.cat_file(dest)
            if hashlib.sha256(back).hexdigest() != digest:
                raise OSError(f"{target.join(rel)}: read-back checksum mismatch after copy")
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
    manifest_location = target.join(MANIFEST)
    manifest_location.write_bytes(json.dumps(manifest, indent=1).encode())
    return PublishReport(source, target, len(entries), copied, total, manifest_location)


def read_manifest(raw: bytes, where: str) -> list[dict]:
    """The object list of a manifest, each entry checked (a relative path inside the
    publication, a size, a SHA-256); ``StoreFormatError`` otherwise: a publication sits
    where others can write."""
    doc = parse_json(raw, f"manifest {where}", MANIFEST_LIMIT, StoreFormatError)
    objects = doc.get("objects") if isinstance(doc, dict) else None
    if not isinstance(objects, list):
        raise StoreFormatError(f"manifest {where} lists no objects")
    for n, e in enumerate(objects):
        rel = e.get("path") if isinstance(e, dict) else None
        size, digest = (e.get("bytes"), e.get("sha256")) if isinstance(e, dict) else (0, 0)
        if (not isinstance(rel, str) or not _OBJECT_PATH.fullmatch(rel)
                or ".." in rel.split("/") or not isinstance(size, int)
                or isinstance(size, bool) or size < 0
                or not isinstance(digest, str) or not _SHA256.fullmatch(digest)):
            raise StoreFormatError(f"manifest {where}: object {n} is malformed")
    return objects


def verify_publication(target: Location) -> list[str]:
    """Re-check every object of a publication against its manifest; list the problems."""
    raw = target.join(MANIFEST).read_bytes(limit=MANIFEST_LIMIT)
    if raw is None:
        return [f"{target} has no {MANIFEST} (unpublished or interrupted)"]
    fs, path = target.filesystem()
    problems = []
    for e in read_manifest(raw, str(target.join(MANIFEST))):
        p = f"{path}/{e['path']}"
        if not fs.exists(p):
            problems.append(f"missing {e['path']}")
            continue
        # One byte past the listed size is enough to tell a longer object.
        data = fs.cat_file(p, start=0, end=e["bytes"] + 1)
        if len(data) != e["bytes"] or hashlib.sha256(data).hexdigest() != e["sha256"]:
            problems.append(f"checksum mismatch {e['path']}")
    return problems
