"""Bulk encoding on Dask into real stores: parallel, resumable, idempotent, incremental,
exclusive; on local disk and on a real S3 server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel
from imambig.model.checkpoint import load_model
from imambig.stages.encode.dask_regions import DaskRegions, local_cluster
from imambig.stages.encode.driver import EncodeReport, SerialRegions, run_encode
from imambig.stages.encode.images import encode_images
from imambig.stages.encode.plan import EncodeContext, EncodeJob
from imambig.stages.versions import lease_location
from imambig.stores.image_store import ImageStoreWriter, open_image_store
from imambig.stores.lease import Lease, LeaseHeld
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from storage_schemas.validate import validate

CHUNK = 64  # 300 synthetic items -> 5 regions


@pytest.fixture(params=["local", "s3"])
def roots(request: pytest.FixtureRequest, tmp_path: Path, owner_env):
    """(public root, keys root) on the chosen backend."""
    if request.param == "local":
        yield Location(str(tmp_path / "public")), Location(str(tmp_path / "keys"))
        return
    server = request.getfixturevalue("s3_server")
    server.start()  # a test that restarted the server may have left it stopped
    tag = uuid.uuid4().hex[:12]
    public, keys = server.create_bucket(f"pub-{tag}"), server.create_bucket(f"keys-{tag}")
    opts = server.storage_options()
    yield Location(f"{public}/celeba", opts), Location(f"{keys}/celeba", opts)
    server.start()
    server.delete_bucket(f"pub-{tag}")
    server.delete_bucket(f"keys-{tag}")


def _job(images: Location, model: Location, roots: tuple[Location, Location],
         **cfg: int) -> EncodeJob:
    public, keys = roots
    return EncodeJob(images=images, model=model, public_root=public, keys_root=keys,
                     config=EncodeConfig(region_items=CHUNK, **cfg))


def _encode(job: EncodeJob, **kw) -> EncodeReport:
    return run_encode(job, DaskRegions(n_workers=kw.pop("n_workers", 1),
                                       cluster=kw.pop("cluster", None)),
                      progress=False, **kw)


def _renamed(roots: tuple[Location, Location], suffix: str) -> tuple[Location, Location]:
    return tuple(Location(r.url + suffix, r.storage_options) for r in roots)  # type: ignore[return-value]


def _version(job: EncodeJob) -> str:
    return EncodeContext.open(job).version


def tree_digest(root: Location) -> dict[str, str]:
    """sha256 of every file under ``root`` except run state (markers hold timings)."""
    fs, path = root.filesystem()
    fs.invalidate_cache()
    out = {}
    for f in sorted(fs.find(path)):
        rel = f[len(path) :].lstrip("/")
        if "_state/" in rel or "_leases/" in rel:
            continue
        out[rel] = hashlib.sha256(fs.cat_file(f)).hexdigest()
    return out


def test_encode_two_workers_matches_single_item_encoding(synthetic_store, tiny_model, roots):
    job = _job(synthetic_store, tiny_model, roots)
    report = _encode(job, n_workers=2)
    assert report.encoded == 300 and report.workers == 2
    # every region says which worker encoded it and where its time went
    for m in report.manifests:
        assert m.worker and all(getattr(m.times, stage) > 0 for stage in (
            "read", "forward", "mechanism", "seal", "keys", "write")), m
    assert sum(r.items for r in report.throughput.workers()) == 300
    for store in (report.plan.public, report.plan.keystore):
        assert validate(store).ok, validate(store).summary()

    # every item's public record and key equal those of encoding it alone
    model, _, _ = load_model(tiny_model)
    noise = NoiseModel.load(tiny_model.join(report.plan.noise_file), model.config)
    store = open_image_store(synthetic_store)
    public = PublicStore.open(report.plan.public)
    secrets = Secrets()
    keystore = Keystore.open(report.plan.keystore, LocalKeyProvider.from_secrets(secrets))
    ids = store.item_ids()
    decoys = DecoyMap.for_owner(noise, secrets.owner_secret)
    for i in (0, 63, 64, 150, 299):
        alone = encode_images(model, noise, decoys, store.read(slice(i, i + 1)),
                              report.precision)
        mask, values = public.read(np.array([i]))
        assert np.array_equal(mask[0], alone.mask[0])
        assert values[0].tobytes() == alone.values[0].tobytes()
        assert keystore.keys([i])[0] == alone.keys[0]
    assert list(public.item_ids()) == keystore.opaque_ids(ids)


def test_any_region_mapper_writes_the_same_bytes(synthetic_store, tiny_model, tmp_path,
                                                 owner_env):
    dask = _job(synthetic_store, tiny_model,
                (Location(str(tmp_path / "p1")), Location(str(tmp_path / "k1"))))
    serial = _job(synthetic_store, tiny_model,
                  (Location(str(tmp_path / "p2")), Location(str(tmp_path / "k2"))))
    _encode(dask)
    report = run_encode(serial, SerialRegions(), progress=False)
    assert report.encoded == 300 and report.workers == 1
    assert tree_digest(dask.public_root) == tree_digest(serial.public_root)
    assert tree_digest(dask.keys_root) == tree_digest(serial.keys_root)


def test_rerun_is_a_no_op_with_identical_bytes(synthetic_store, tiny_model, roots):
    job = _job(synthetic_store, tiny_model, roots)
    first = _encode(job)
    before = tree_digest(job.public_root), tree_digest(job.keys_root)
    again = _encode(job)
    assert again.encoded == 0 and again.plan.done == 5
    after = tree_digest(job.public_root), tree_digest(job.keys_root)
    assert before == after
    assert first.plan.public == again.plan.public


def test_killed_run_resumes_to_identical_bytes(synthetic_store, tiny_model, roots, tmp_path):
    public, keys = roots
    clean = _job(synthetic_store, tiny_model, _renamed(roots, "-clean"))
    _encode(clean)

    job = _job(synthetic_store, tiny_model, roots)
    cmd = [sys.executable, "-m", "imambig.cli", "encode", "--images", str(synthetic_store),
           "--model", str(tiny_model), "--public", str(public), "--keys", str(keys),
           "--workers", "1", "--chunk-items", str(CHUNK),
           "--storage-options", json.dumps(public.storage_options)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    version = _version(job)
    fs, regions = keys.join(version, "_state", "regions").filesystem()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            fs.invalidate_cache()
            if fs.exists(regions) and len(fs.ls(regions)) >= 2:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its Dask workers
        proc.wait()
    fs.invalidate_cache()
    assert 2 <= len(fs.ls(regions)) < 5, "the kill did not land mid-run"

    # The dead run's lease is still there; its process is gone, so it is taken over.
    assert Lease(lease_location(keys, version)).holder() is not None
    resumed = _encode(job)
    assert resumed.plan.done >= 2 and resumed.encoded < 300
    assert tree_digest(public) == tree_digest(clean.public_root)
    assert tree_digest(keys) == tree_digest(clean.keys_root)


def test_worker_killed_mid_region_resumes_to_identical_bytes(synthetic_store, tiny_model,
                                                             roots):
    clean = _job(synthetic_store, tiny_model, _renamed(roots, "-clean"))
    _encode(clean)
    job = _job(synthetic_store, tiny_model, roots)
    # The cluster an encode starts (closed, TLS), started here to see inside it: its
    # scheduler runs in this process.
    regions = job.keys_root.join(_version(job), "_state", "regions")
    with local_cluster(2) as cluster:
        killed: list[tuple[int, int]] = []

        def kill_busy(manifest, done, total) -> None:
            # The worker that sent this region went on with its next one: kill it there.
            if killed:
                return
            ts = cluster.scheduler.tasks[f"encode-region-{manifest.start}-{manifest.stop}"]
            (sender,) = ts.who_has
            nanny = next(n for n in cluster.workers.values()
                         if n.worker_address == sender.address)
            held = [tuple(int(x) for x in t.key.split("-")[2:]) for t in sender.processing]
            busy = [r for r in held  # unfinished: no done-marker yet
                    if regions.join(f"{r[0]:012d}-{r[1]:012d}.json").read_bytes() is None]
            if busy:  # else it went idle already: wait for the next region
                os.kill(nanny.process.pid, signal.SIGKILL)
                killed.extend(busy)

        report = _encode(job, cluster=cluster, on_region=kill_busy)
    assert killed, "the worker was killed between regions, not in one"
    redone = {(m.start, m.stop) for m in report.manifests if not m.skipped}
    assert set(killed) <= redone  # by the surviving or the restarted worker
    assert report.plan.n_items == 300 and report.encoded == 300
    assert validate(report.plan.public).ok
    assert tree_digest(job.public_root) == tree_digest(clean.public_root)
    assert tree_digest(job.keys_root) == tree_digest(clean.keys_root)


def test_second_run_on_the_same_target_is_refused(synthetic_store, tiny_model, roots):
    job = _job(synthetic_store, tiny_model, roots)
    holder = Lease(lease_location(job.keys_root, _version(job))).acquire()
    try:
        with pytest.raises(LeaseHeld, match="another encode run"):
            _encode(job)
    finally:
        holder.release()
    assert _encode(job).encoded == 300


def test_concurrent_cli_runs_one_proceeds_one_refuses(synthetic_store, tiny_model, tmp_path,
                                                      owner_env):
    public, keys = str(tmp_path / "public"), str(tmp_path / "keys")
    cmd = [sys.executable, "-m", "imambig.cli", "encode", "--images", str(synthetic_store),
           "--model", str(tiny_model), "--public", public, "--keys", keys, "--workers", "1",
           "--chunk-items", str(CHUNK)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 3)
    assert "another encode run" in refused
    version = json.loads(Path(public, "current.json").read_text())["version"]
    assert validate(Location(public).join(version)).ok


def test_new_images_are_encoded_without_touching_old_ones(synthetic_store, tiny_model, tmp_path,
                                                          owner_env):
    # A store with the first 200 images, later grown to all 300.
    full = open_image_store(synthetic_store)
    grown = Location(str(tmp_path / "grown"))
    w = ImageStoreWriter.create(grown, n_items=200, height=32, width=32, chunk_items=100,
                                attrs={"source": "synthetic"})
    w.write_images(0, full.read(slice(0, 200)))
    w.write_labels(list(full.item_ids()[:200]), full.splits()[:200], full.identities()[:200],
                   full.source_digests()[:200])
    w.finish()
    roots = (Location(str(tmp_path / "public")), Location(str(tmp_path / "keys")))
    job = _job(grown, tiny_model, roots)
    first = _encode(job)
    assert first.encoded == 200
    old = tree_digest(first.plan.public)

    w = ImageStoreWriter.open(grown)
    w.resize(300)
    w.write_images(200, full.read(slice(200, 300)))
    w.write_labels(list(full.item_ids()), full.splits(), full.identities(),
                   full.source_digests())
    w.finish()
    second = _encode(job)
    # chunks 0..2 (items 0..191) were complete and stay untouched; of the partly filled
    # chunk 3 only the new items are encoded, its 8 finished ones copied
    assert second.encoded == 300 - 200
    new = tree_digest(second.plan.public)
    for name in ("support/c/0/0/0", "values/c/0/0/0", "support/c/2/0/0"):
        assert new[name] == old[name]
    assert validate(second.plan.public).ok

    # ... and the result equals encoding all 300 from scratch
    scratch = _job(grown, tiny_model,
                   (Location(str(tmp_path / "p2")), Location(str(tmp_path / "k2"))))
    third = _encode(scratch)
    a, b = tree_digest(second.plan.public), tree_digest(third.plan.public)
    assert {k: v for k, v in a.items() if "/c/" in k} == {k: v for k, v in b.items() if "/c/" in k}


def test_public_store_and_keystore_must_not_share_a_root(synthetic_store, tiny_model, tmp_path,
                                                         owner_env):
    job = _job(synthetic_store, tiny_model, (Location(str(tmp_path / "stores")),
                                             Location(str(tmp_path / "stores" / "keys"))))
    with pytest.raises(ValueError, match="share a root"):
        _encode(job)
    assert not (tmp_path / "stores").exists()


def _local_roots(tmp_path: Path) -> tuple[Location, Location]:
    return Location(str(tmp_path / "pub")), Location(str(tmp_path / "keys"))


def test_public_store_opens_without_imambig(synthetic_store, tiny_model, tmp_path, owner_env):
    job = _job(synthetic_store, tiny_model, _local_roots(tmp_path))
    url = _encode(job).plan.public.url
    code = f"""
import sys, numpy as np, zarr, xarray as xr
g = zarr.open_group({url!r}, mode="r")
assert g.attrs["schema"] == "imambig.public-store/2"
bits = np.unpackbits(g["support"][:2], axis=-1)
assert (bits.sum(-1) == g.attrs["k_public"]).all()
ds = xr.open_zarr({url!r}, consolidated=True)
assert ds["values"].shape == (300, g.attrs["n_maps"], g.attrs["k_public"])
assert not any(m.startswith("imambig") for m in sys.modules)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr


def test_validator_reports_unwritten_chunks_and_foreign_attributes(synthetic_store, tiny_model,
                                                                   tmp_path, owner_env):
    job = _job(synthetic_store, tiny_model, _local_roots(tmp_path))
    public = _encode(job).plan.public
    os.remove(Path(public.url, "support", "c", "1", "0", "0"))
    store = PublicStore.open(public, mode="r+")
    store.group.attrs["owner_secret_hint"] = "nope"
    report = validate(public)
    text = report.summary()
    assert not report.ok
    assert "64 items have no public record" in text
    assert "unexpected attribute 'owner_secret_hint'" in text


def test_lease_renewal_keeps_a_long_run_exclusive(tmp_path):
    url = str(tmp_path / "lease.json")
    with Lease(Location(url), ttl_s=0.6):
        time.sleep(1.0)  # longer than the TTL: renewal must keep it alive
        with pytest.raises(LeaseHeld):
            Lease(Location(url), ttl_s=0.6).acquire()
    assert not Path(url).exists()
    # an expired lease of a dead holder is taken over
    Path(url).write_text(json.dumps({"owner": "dead", "acquired": 0, "expires": 1}))
    lease = Lease(Location(url), ttl_s=5).acquire()
    assert lease.holder()["owner"] == lease.owner
    lease.release()
    assert lease.holder() is None


def test_s3_server_restart_mid_run_then_rerun_is_byte_identical(synthetic_store, tiny_model,
                                                                 s3_server, owner_env):
    tag = uuid.uuid4().hex[:12]
    opts = s3_server.storage_options()
    pub, keys = s3_server.create_bucket(f"pub-{tag}"), s3_server.create_bucket(f"keys-{tag}")
    clean = _job(synthetic_store, tiny_model,
                 (Location(f"{pub}/clean", opts), Location(f"{keys}/clean", opts)))
    _encode(clean)

    job = _job(synthetic_store, tiny_model, (Location(f"{pub}/x", opts), Location(f"{keys}/x", opts)))
    restarted: list[bool] = []

    def crash_storage(manifest, done, total) -> None:
        if not restarted:
            restarted.append(True)
            s3_server.restart(graceful=False)  # the object store dies and comes back

    # The run may fail while storage is down; re-running must repair it.
    with contextlib.suppress(Exception):
        _encode(job, on_region=crash_storage)
    assert restarted
    _encode(job)
    assert tree_digest(job.public_root) == tree_digest(clean.public_root)
    assert tree_digest(job.keys_root) == tree_digest(clean.keys_root)
    assert validate(job.public_root.join(_version(job))).ok


def test_a_worker_keeps_one_runs_stores_and_never_hands_them_to_another(tmp_path):
    """Regions of one run reuse the stores a worker opened (opening costs metadata reads
    on S3); another run, a run without a fence, or a region that failed opens afresh."""
    from imambig.access.secrets import Secret
    from imambig.stages.encode import regions
    from imambig.stages.encode.plan import Plan
    from imambig.stages.encode.region_keys import RegionKeys
    from imambig.stores.lease import Fence

    keys = RegionKeys("m", Secret(b"s" * 32), Secret(b"t" * 32), Secret(b"d" * 32), b"w")
    root = Location(str(tmp_path))

    def plan(fence: Fence | None) -> Plan:
        return Plan("v1", root.join("public"), root.join("keys"), 10, 5, ((0, 5), (5, 10)), 0,
                    fence=fence)

    run = plan(Fence(root.join("lease"), "host:1:first-run"))
    failed = regions._run_stores(run, root.join("images"), keys)
    regions._drop_stores(failed)
    kept = regions._run_stores(run, root.join("images"), keys)
    assert kept is not failed
    assert regions._run_stores(run, root.join("images"), keys) is kept
    assert regions._run_stores(plan(Fence(root.join("lease"), "host:1:next-run")),
                               root.join("images"), keys) is not kept
    assert regions._run_stores(run, root.join("other-images"), keys) is not kept
    unfenced = plan(None)
    assert (regions._run_stores(unfenced, root.join("images"), keys)
            is not regions._run_stores(unfenced, root.join("images"), keys))
