"""Leases that keep encode runs apart at the edges (issue #12, item 6): writes fenced by
the lease, endpoints that ignore conditional writes refused, lease files that appear
whole, and no takeover by PID across kernels or PID namespaces."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from imambig.config import EncodeConfig
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeContext, EncodeJob
from imambig.stages.versions import lease_location
from imambig.stores import lease as L
from imambig.stores.location import Location
from tests.s3_stub import ignoring_conditions_endpoint


def _record(**fields) -> str:
    now = time.time()
    return json.dumps({"owner": "other-run", "acquired": now, "expires": now + 600, **fields})


def test_a_run_whose_lease_was_taken_over_stops_writing(synthetic_store, tiny_model, tmp_path,
                                                        owner_env) -> None:
    job = EncodeJob(images=synthetic_store, model=tiny_model,
                    public_root=Location(str(tmp_path / "public")),
                    keys_root=Location(str(tmp_path / "keys")),
                    config=EncodeConfig(region_items=64))
    version = EncodeContext.open(job).version
    lease_file = Path(lease_location(job.keys_root, version).url)

    def take_over(manifest, done, total) -> None:  # another run takes the lease
        lease_file.write_text(_record())

    with pytest.raises(L.LeaseLost, match="lost the lease"):
        run_encode(job, SerialRegions(), progress=False, on_region=take_over)
    markers = list((tmp_path / "keys" / version / "_state" / "regions").iterdir())
    assert len(markers) == 1, "regions were committed after the lease was lost"
    assert not (tmp_path / "public" / "current.json").exists()
    assert json.loads(lease_file.read_text())["owner"] == "other-run"  # left to its holder


def test_an_endpoint_that_ignores_conditional_writes_is_refused() -> None:
    with ignoring_conditions_endpoint() as opts:
        lease = L.Lease(Location("s3://b/keys/_leases/v.json", opts))
        with pytest.raises(L.UnsafeStorage, match="ignores If-None-Match"):
            lease.acquire()


def test_seaweedfs_honours_conditional_writes(s3_bucket) -> None:
    url, opts = s3_bucket
    with L.Lease(Location(f"{url}/_leases/v.json", opts)) as lease:
        assert lease.holder()["owner"] == lease.owner
        with pytest.raises(L.LeaseHeld, match="another encode run"):
            L.Lease(Location(f"{url}/_leases/v.json", opts)).acquire()


def test_a_crash_while_writing_the_lease_never_locks_the_target(tmp_path,
                                                                monkeypatch) -> None:
    where = Location(str(tmp_path / "_leases" / "v.json"))
    real_fdopen = os.fdopen

    class Crashing:
        def __init__(self, f) -> None:
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

        def write(self, _data) -> None:
            raise KeyboardInterrupt  # killed between creating the file and writing it

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Crashing(real_fdopen(fd, *a, **k)))
    with pytest.raises(KeyboardInterrupt):
        L.Lease(where).acquire()
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert not Path(where.url).exists() or Path(where.url).read_bytes()
    lease = L.Lease(where).acquire()  # not refused, not a crash on an empty file
    assert lease.holder()["owner"] == lease.owner
    lease.release()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("other", ["boot_id", "pid_ns", "legacy"])
def test_no_takeover_by_pid_from_another_kernel_or_pid_namespace(tmp_path, other) -> None:
    """Same host name and a PID that is not running here: the holder may be alive in
    another container or on another machine with that name, so the lease is waited for."""
    boot, pid_ns = L._this_kernel()
    fields = {"host": socket.gethostname(), "pid": _dead_pid(), "boot_id": boot,
              "pid_ns": pid_ns, "pid_start": "1"}
    if other == "legacy":  # a record of today's format: owner "host:pid:tag" only
        fields = {"owner": f"{socket.gethostname()}:{fields['pid']}:abcd1234"}
    else:
        fields[other] = f"{other}-of-another-kernel-{uuid.uuid4().hex}"
    where = tmp_path / "v.json"
    where.write_text(_record(**fields))
    with pytest.raises(L.LeaseHeld, match="another encode run"):
        L.Lease(Location(str(where))).acquire()


def test_a_dead_holder_of_this_kernel_is_taken_over_at_once(tmp_path) -> None:
    boot, pid_ns = L._this_kernel()
    if not boot or not pid_ns:
        pytest.skip("no /proc: holders are always waited for")
    where = tmp_path / "v.json"
    where.write_text(_record(host=socket.gethostname(), pid=_dead_pid(), boot_id=boot,
                             pid_ns=pid_ns, pid_start="1"))
    lease = L.Lease(Location(str(where))).acquire()
    assert lease.holder()["owner"] == lease.owner
    lease.release()
