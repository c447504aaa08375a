"""Three simulated nights of a growing CelebA collection, measured end to end.

Night 1 ingests 3,000 faces; nights 2 and 3 add 1,000 each whose names sort before,
between and after the held ones. Each night appends to the image store, encodes only
the new items (Dask, local cluster), validates both stores, and checks that every
earlier item's record (support, values, id) and keystore slot (key, record digest) is
byte-identical to the night before. At the end the stores are compared with one encode
of the same image store (same items, same order) into fresh roots.

    python benchmarks/nightly_celeba.py --celeba ../shared/data/celeba-6k \\
        --model runs/small24 --work runs/nightly [--size 64 --workers 2]

Secrets: IMAMBIG_OWNER_SECRET / IMAMBIG_KEYSTORE_KEY from the environment, or fresh
random ones for this run. Prints one line per night and a verdict; exits 1 on any
failed check.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig, IngestConfig
from imambig.stages.encode.dask_regions import DaskRegions
from imambig.stages.encode.driver import run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.ingest import ingest
from imambig.stages.versions import current_version
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from storage_schemas.validate import validate


def nights(names: list[str], seed: int = 0) -> list[list[str]]:
    """3,000 names from the middle of 5,000, then two 1,000s that fall before, between
    and after them."""
    pool = sorted(names)[:5000]
    rng = np.random.default_rng(seed)
    middle = np.arange(250, 4750)
    first = set(rng.choice(middle, 3000, replace=False).tolist())
    rest = [i for i in range(5000) if i not in first]
    rng.shuffle(rest)
    return [[pool[i] for i in sorted(first)], [pool[i] for i in sorted(rest[:1000])],
            [pool[i] for i in sorted(rest[1000:])]]


def stage_source(celeba: Path, source: Path, names: list[str]) -> None:
    """A CelebA-shaped folder holding just ``names`` (links to the originals)."""
    img = source / "img_align_celeba"
    img.mkdir(parents=True, exist_ok=True)
    for n in names:
        if not (img / n).exists():
            (img / n).symlink_to((celeba / "img_align_celeba" / n).resolve())
    held = {p.name for p in img.iterdir()}
    for table in ("list_eval_partition.txt", "identity_CelebA.txt"):
        lines = (celeba / table).read_text().splitlines()
        (source / table).write_text("".join(f"{ln}\n" for ln in lines
                                            if ln.split()[0] in held))


def snapshot(public_root: Location, keys_root: Location, provider: LocalKeyProvider):
    public = PublicStore.open(current_version(public_root))
    ks = Keystore.open(current_version(keys_root), provider)
    bits = np.asarray(public.group["support"][:])
    values = np.asarray(public.group["values"][:])
    rows = -(-public.n_items // ks.chunk_items)
    slots = [(s.item_id, s.record, s.key) for r in range(rows) for s in ks.read_row(r)]
    return bits, values, public.item_ids(), slots


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--celeba", required=True, help="CelebA root (img_align_celeba/, ...)")
    p.add_argument("--model", required=True, help="model folder of the image size")
    p.add_argument("--work", required=True, help="folder for the stores (emptied first)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--region-items", type=int, default=EncodeConfig().region_items)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    for name in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY"):
        os.environ.setdefault(name, base64.b64encode(secrets.token_bytes(32)).decode())
    celeba, work = Path(a.celeba), Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    names = sorted(p.name for p in (celeba / "img_align_celeba").iterdir())
    provider = LocalKeyProvider.from_secrets(Secrets())
    images = Location(str(work / "images"))
    public, keys = Location(str(work / "public")), Location(str(work / "keys"))
    model = Location(a.model)
    config = EncodeConfig(region_items=a.region_items)
    ingest_config = IngestConfig(height=a.size, width=a.size, crop=178, split="identity:0.8")
    ok, before = True, None
    print("| night | new files | added | set aside | encoded | encode s | images/s | "
          "valid | earlier items identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for night, new in enumerate(nights(names), 1):
        stage_source(celeba, work / "source", new)
        report = ingest(Location(str(work / "source")), images, ingest_config)
        t = time.perf_counter()
        enc = run_encode(EncodeJob(images, model, public, keys, config),
                         DaskRegions(n_workers=a.workers), progress=False)
        seconds = time.perf_counter() - t
        valid = validate(enc.plan.public).ok and validate(enc.plan.keystore).ok
        now = snapshot(public, keys, provider)
        same = "–"
        if before is not None:
            held = len(before[2])
            same = bool(all(np.array_equal(x[:held], y) for x, y in zip(now[:3], before[:3],
                                                                        strict=True))
                        and now[3][:held] == before[3])
            ok &= same
        ok &= valid and report.written == len(new) == enc.encoded
        print(f"| {night} | {len(new):,} | {report.written:,} | {report.n_set_aside} | "
              f"{enc.encoded:,} | {seconds:.1f} | {enc.encoded / seconds:.1f} | {valid} | "
              f"{same} |")
        before = now
    t = time.perf_counter()
    one = run_encode(EncodeJob(images, model, Location(str(work / "public-once")),
                               Location(str(work / "keys-once")), config),
                     DaskRegions(n_workers=a.workers), progress=False)
    ref = snapshot(Location(str(work / "public-once")), Location(str(work / "keys-once")),
                   provider)
    equal = bool(all(np.array_equal(x, y) for x, y in zip(ref[:3], before[:3], strict=True))
                 and ref[3] == before[3])
    ok &= equal
    print(f"\none encode of the same {one.plan.n_items:,} items in "
          f"{time.perf_counter() - t:.1f} s: records, ids and keys equal to the three "
          f"nights': {equal}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
