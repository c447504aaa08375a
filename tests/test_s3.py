"""The real S3 path end to end, against a local SeaweedFS server (``tests/fixtures_s3.py``).

Covers plain s3fs use, Zarr stores through ``imambig.stores.location``, mixing Zarr's async
I/O with synchronous s3fs in one process, the server restarting mid-run, and the
conditional writes (create-if-absent, compare-and-swap) a store lease builds on.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3fs
import zarr

from imambig.stores.lease import Lease, LeaseHeld, S3ObjectCAS, precondition_failed
from imambig.stores.location import Location
from infra.seaweedfs import PORT_FLAGS, SeaweedError, SeaweedS3, free_ports

Bucket = tuple[str, dict[str, Any]]


def _fs(opts: dict[str, Any]) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**opts)


def _path(url: str) -> str:
    return url.removeprefix("s3://")


# -- conditional writes ---------------------------------------------------------------


# The project's compare-and-swap primitives (the lease is built on them), tested here
# against the real server.
def create_if_absent(fs: s3fs.S3FileSystem, path: str, data: bytes) -> str | None:
    return S3ObjectCAS(fs, path).create(data)


def replace_if_unchanged(fs: s3fs.S3FileSystem, path: str, data: bytes, etag: str) -> str | None:
    return S3ObjectCAS(fs, path).replace(data, etag)


def delete_if_unchanged(fs: s3fs.S3FileSystem, path: str, etag: str) -> bool:
    return S3ObjectCAS(fs, path).delete(etag)


def _race(clients: list[s3fs.S3FileSystem], attempts: int, attempt: Any) -> list[Any]:
    """Run ``attempt(fs, i)`` ``attempts`` times at once, in threads sharing ``clients``."""
    for fs in clients:
        fs.connect()  # set up each client beforehand, so the requests really overlap
    barrier = threading.Barrier(attempts)
    results: list[Any] = [None] * attempts

    def run(i: int) -> None:
        barrier.wait()
        results[i] = attempt(clients[i % len(clients)], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(attempts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


# -- tests ----------------------------------------------------------------------------


def test_s3fs_put_get_ls(s3_bucket: Bucket, tmp_path: Path) -> None:
    url, opts = s3_bucket
    fs = _fs(opts)
    root = _path(url)

    fs.pipe_file(f"{root}/a/one.bin", b"one")
    local = tmp_path / "two.bin"
    local.write_bytes(b"two" * 1000)
    fs.put(str(local), f"{root}/a/two.bin")

    assert sorted(fs.ls(f"{root}/a", refresh=True)) == [f"{root}/a/one.bin", f"{root}/a/two.bin"]
    assert fs.cat_file(f"{root}/a/one.bin") == b"one"
    assert fs.info(f"{root}/a/two.bin")["size"] == 3000
    fs.get(f"{root}/a/two.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()

    fs.rm(f"{root}/a/one.bin")
    assert not fs.exists(f"{root}/a/one.bin")


def test_zarr_group_roundtrip_through_a_location(s3_bucket: Bucket) -> None:
    url, opts = s3_bucket
    target = Location(url, opts).join("images.zarr")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 2**16, size=(6, 5), dtype=np.uint16)

    group = zarr.open_group(target.zarr_store(mode="w"), mode="w")
    group.attrs["kind"] = "test"
    group.create_array("img", shape=data.shape, chunks=(2, 3), dtype=data.dtype)[:] = data

    # A fresh store, as another process would open it.
    reread = zarr.open_group(target.zarr_store(mode="r"), mode="r")
    assert reread.attrs["kind"] == "test"
    img = reread["img"]
    assert isinstance(img, zarr.Array)
    for i, j in itertools.product(range(0, 6, 2), range(0, 5, 3)):
        np.testing.assert_array_equal(img[i : i + 2, j : j + 3], data[i : i + 2, j : j + 3])

    # Every chunk is its own object in the bucket (3 x 2 chunks).
    fs, path = target.filesystem()
    assert len(fs.find(f"{path}/img/c")) == 6


def test_zarr_async_then_sync_s3fs_in_one_process(s3_bucket: Bucket) -> None:
    """Zarr drives s3fs from its own event loop; sync s3fs afterwards must still work."""
    url, opts = s3_bucket
    target = Location(url, opts).join("mixed.zarr")
    data = np.arange(24, dtype=np.int32).reshape(4, 6)

    group = zarr.open_group(target.zarr_store(mode="w"), mode="w")
    group.create_array("a", shape=data.shape, chunks=(2, 2), dtype=data.dtype)[:] = data

    fs, path = target.filesystem()
    assert fs.exists(f"{path}/zarr.json")
    assert b'"node_type"' in _fs(opts).cat_file(f"{path}/a/zarr.json")

    async def read_async() -> np.ndarray:
        # Zarr's async API inside a caller's own (short-lived) loop.
        g = await zarr.api.asynchronous.open_group(store=target.zarr_store(), mode="r")
        arr = await g.getitem("a")
        return await arr.getitem(slice(None))

    np.testing.assert_array_equal(asyncio.run(read_async()), data)
    np.testing.assert_array_equal(asyncio.run(read_async()), data)

    # Sync again after those loops closed: fresh instances, no "Event loop is closed".
    fs, path = target.filesystem()
    fs.pipe_file(f"{path}/after.txt", b"ok")
    assert _fs(opts).cat_file(f"{path}/after.txt") == b"ok"
    reread = zarr.open_group(target.zarr_store(), mode="r")["a"]
    assert isinstance(reread, zarr.Array)
    np.testing.assert_array_equal(reread[:], data)


@pytest.mark.parametrize("graceful", [True, False], ids=["clean-restart", "crash-restart"])
def test_server_restart_keeps_data(s3_server: SeaweedS3, s3_bucket: Bucket, graceful: bool) -> None:
    url, opts = s3_bucket
    target = Location(url, opts).join("restart.zarr")
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    fs = _fs(opts)
    root = _path(url)
    fs.pipe_file(f"{root}/before.txt", b"before")
    group = zarr.open_group(target.zarr_store(mode="w"), mode="w")
    group.create_array("a", shape=data.shape, chunks=(1, 4), dtype=data.dtype)[:] = data
    endpoint = s3_server.endpoint_url

    s3_server.restart(graceful=graceful)

    assert s3_server.running
    assert s3_server.endpoint_url == endpoint
    # The client from before the restart carries on, and a new one sees everything.
    assert fs.cat_file(f"{root}/before.txt") == b"before"
    fs.pipe_file(f"{root}/after.txt", b"after")
    assert _fs(opts).cat_file(f"{root}/after.txt") == b"after"
    reread = zarr.open_group(target.zarr_store(), mode="r")["a"]
    assert isinstance(reread, zarr.Array)
    np.testing.assert_array_equal(reread[:], data)


def test_create_if_absent_is_atomic(s3_bucket: Bucket) -> None:
    url, opts = s3_bucket
    fs = _fs(opts)
    path = f"{_path(url)}/store.lease"

    assert create_if_absent(fs, path, b"first") is not None
    assert create_if_absent(fs, path, b"second") is None
    assert fs.cat_file(path) == b"first"

    # s3fs's own exclusive-create spellings send the same If-None-Match: * header.
    with pytest.raises(OSError) as excinfo:
        fs.pipe_file(path, b"third", mode="create")
    assert precondition_failed(excinfo.value)
    with pytest.raises(OSError) as excinfo, fs.open(path, "xb") as fh:
        fh.write(b"fourth")
    assert precondition_failed(excinfo.value)
    assert fs.cat_file(path) == b"first"

    # Separate clients (separate runs) racing for the same key: exactly one wins.
    race_path = f"{_path(url)}/race.lease"
    runs = [_fs(opts) for _ in range(4)]
    results = _race(runs, 8, lambda fs, i: create_if_absent(fs, race_path, f"run {i}".encode()))
    winners = [i for i, etag in enumerate(results) if etag is not None]
    assert len(winners) == 1
    assert fs.cat_file(race_path) == f"run {winners[0]}".encode()


def test_compare_and_swap_with_if_match(s3_bucket: Bucket) -> None:
    """Renewing, taking over and releasing a lease safely need If-Match on put and delete."""
    url, opts = s3_bucket
    fs = _fs(opts)
    path = f"{_path(url)}/cas.lease"
    etag = create_if_absent(fs, path, b"v1")
    assert etag is not None

    renewed = replace_if_unchanged(fs, path, b"v2", etag)
    assert renewed is not None and renewed != etag
    assert replace_if_unchanged(fs, path, b"stale", etag) is None
    assert fs.cat_file(path) == b"v2"

    takers = [_fs(opts) for _ in range(4)]
    results = _race(
        takers, 8, lambda fs, i: replace_if_unchanged(fs, path, f"taker {i}".encode(), renewed)
    )
    winners = [i for i, new in enumerate(results) if new is not None]
    assert len(winners) == 1
    current = results[winners[0]]

    assert not delete_if_unchanged(fs, path, renewed)
    assert fs.exists(path)
    assert delete_if_unchanged(fs, path, current)
    assert not fs.exists(path)


def test_env_variables_configure_plain_clients(s3_env: dict[str, str], s3_bucket: Bucket) -> None:
    url, opts = s3_bucket
    _fs(opts).pipe_file(f"{_path(url)}/env.txt", b"env")
    # No explicit options: credentials, endpoint and region all come from the environment.
    plain = s3fs.S3FileSystem(skip_instance_cache=True)
    assert plain.cat_file(f"{_path(url)}/env.txt") == b"env"
    assert s3_env["AWS_ENDPOINT_URL_S3"] == opts["client_kwargs"]["endpoint_url"]


def test_second_server_runs_beside_the_first(s3_server: SeaweedS3) -> None:
    """Parallel test sessions each get their own server on their own free ports."""
    with SeaweedS3(buckets=["other"]) as other:
        assert set(other.ports.values()).isdisjoint(s3_server.ports.values())
        assert other.access_key != s3_server.access_key
        fs = _fs(other.storage_options())
        fs.pipe_file("other/x", b"x")
        assert fs.cat_file("other/x") == b"x"
        assert "other" not in s3_server.list_buckets()
    # Without a data_dir it ran in a temporary folder, removed on exit.
    assert not other.running
    assert not other.data_dir.exists()


def test_free_ports_are_distinct() -> None:
    ports = free_ports(len(PORT_FLAGS))
    assert len(set(ports)) == len(ports)


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SeaweedError, match="not an executable"):
        SeaweedS3(tmp_path / "s3", weed=str(tmp_path / "no-such-weed"))


def test_failed_start_reports_the_server_log(tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'F0101 boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = SeaweedS3(tmp_path / "s3", weed=str(fake))
    with pytest.raises(SeaweedError, match=r"(?s)exited with code 3.*boom: cannot start"):
        server.start()
    assert not server.running


def test_lease_on_s3_is_exclusive_and_taken_over_when_expired(s3_bucket) -> None:
    url, opts = s3_bucket
    lease = Location(url, opts).join("_leases", "v.json")
    first = Lease(lease, ttl_s=30).acquire()
    with pytest.raises(LeaseHeld, match="another encode run"):
        Lease(lease).acquire()
    first.release()
    assert Lease(lease).holder() is None
    # a lease left by a holder on another host expires, then is taken over
    fs, path = lease.filesystem()
    fs.pipe_file(path, b'{"owner": "elsewhere:1:x", "acquired": 0, "expires": 1}')
    taker = Lease(lease).acquire()
    assert taker.holder()["owner"] == taker.owner
    taker.release()
