"""A flaky object store: faults injected between imambig and a real S3 server.

``tests/fault_proxy.py`` sits in front of SeaweedFS and answers a share of requests with
500 or 503, resets the connection, holds the answer past the client's read timeout, or
cuts the answer short. Through it an encode (on a real Dask worker), the validator, a
grant and a reveal end with stores byte-identical to a fault-free run; lost answers to
the lease's conditional writes are told from another run's; and a store that never
answers gives ``StorageUnavailableError`` within the retry budget.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import zarr

from imambig.access.identity import new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.cli import main
from imambig.config import EncodeConfig, StorageRetryConfig
from imambig.errors import StorageUnavailableError
from imambig.stages.encode.dask_regions import DaskRegions
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.share import issue_grant, reveal
from imambig.stores.image_store import open_image_store
from imambig.stores.lease import Lease, LeaseHeld
from imambig.stores.location import Location
from imambig.stores.retry import RetryingS3FileSystem
from infra.seaweedfs import SeaweedS3
from storage_schemas.validate import validate
from tests.fault_proxy import FAULTS, FaultProxy

# A held answer costs the client one second, not s3fs's 15, so tests stay short; the
# proxy holds answers for longer than that.
FAST = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 1}}
HELD_S = 2.0


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> Iterator[Callable[[str], str]]:
    """Makes fresh buckets (``bucket("pub")`` -> ``s3://pub-...``), deleted afterwards."""
    s3_server.start()  # a test that restarted the server may have left it stopped
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:12]}")
        return s3_server.create_bucket(made[-1])

    yield make
    s3_server.start()
    for name in made:
        s3_server.delete_bucket(name)


def objects(root: Location) -> dict[str, str]:
    """sha256 of every object under ``root`` but run state (markers hold timings)."""
    fs, path = root.filesystem()
    return {f[len(path):]: hashlib.sha256(fs.cat_file(f)).hexdigest()
            for f in sorted(fs.find(path))
            if "/_state/" not in f and "/_leases/" not in f}


def _job(images: Location, model: Location, public: str, keys: str,
         options: dict[str, Any]) -> EncodeJob:
    return EncodeJob(images=images, model=model, public_root=Location(public, options),
                     keys_root=Location(keys, options), config=EncodeConfig(region_items=64))


def test_encode_validate_grant_reveal_through_faults(s3_server, bucket, synthetic_store,
                                                     tiny_model, owner_env) -> None:
    direct = s3_server.storage_options()
    clean = _job(synthetic_store, tiny_model, f"{bucket('pub')}/c", f"{bucket('keys')}/c",
                 direct)
    clean_plan = run_encode(clean, SerialRegions(), progress=False).plan
    names = [str(i) for i in open_image_store(synthetic_store).item_ids()][::15]  # 20
    secrets = Secrets()
    signer = signing_key(secrets.signing_key)
    alice = new_identity()

    with FaultProxy(s3_server.endpoint_url, rate=0.06, seed=23, delay_s=HELD_S) as proxy:
        opts = {**proxy.storage_options(direct), **FAST}
        job = _job(synthetic_store, tiny_model, f"{bucket('pub')}/c", f"{bucket('keys')}/c",
                   opts)
        plan = run_encode(job, DaskRegions(n_workers=1), progress=False).plan
        checks = [validate(store) for store in (plan.public, plan.keystore)]
        blob = issue_grant(job.public_root, job.keys_root, names, alice.public_text(),
                           LocalKeyProvider.from_secrets(secrets), signer)
        seen = reveal(blob, alice, public_text(signer), tiny_model, public=plan.public)
        counts = dict(proxy.counts)

    # Every kind of fault happened, and none was noticed.
    assert all(counts.get(kind, 0) > 0 for kind in FAULTS), counts
    assert all(check.ok for check in checks), [c.summary() for c in checks]
    for faulty, fault_free in ((job.public_root, clean.public_root),
                               (job.keys_root, clean.keys_root)):
        got = objects(Location(faulty.url, direct))
        assert got == objects(fault_free) and len(got) > 5
    expected = reveal(blob, alice, public_text(signer), tiny_model,
                      public=Location(clean_plan.public.url, direct))
    assert seen.item_ids == names
    assert np.array_equal(seen.images, expected.images)


def _first_try_of_each_conditional_write() -> Callable[..., bool]:
    """Picks the first attempt of every distinct conditional write (a retry is the same
    request again: same target, condition and body)."""
    seen: set[str] = set()

    def match(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        condition = [f"{k.lower()}={v}" for k, v in headers
                     if k.lower() in ("if-none-match", "if-match")]
        if not condition:
            return False
        key = hashlib.sha256(json.dumps([method, target, condition]).encode() + body)
        if key.hexdigest() in seen:
            return False
        seen.add(key.hexdigest())
        return True

    return match


@pytest.mark.parametrize("kind", ["cut", "reset", "delay"])
def test_lost_answers_to_the_lease_writes_are_not_another_run(s3_server, bucket,
                                                              kind: str) -> None:
    """Each conditional write of the lease is carried out and its answer lost, so its
    retry is refused (412): the lease must still be taken, renewed and released, and a
    second run still refused."""
    direct = s3_server.storage_options()
    url = bucket("keys")
    with FaultProxy(s3_server.endpoint_url, rate=1.0, kinds=(kind,), reset_after=1.0,
                    delay_s=HELD_S, match=_first_try_of_each_conditional_write()) as proxy:
        where = Location(f"{url}/_leases/v.json", {**proxy.storage_options(direct), **FAST})
        lease = Lease(where, ttl_s=3.0).acquire()
        try:
            with pytest.raises(LeaseHeld, match="another encode run"):
                Lease(Location(where.url, direct)).acquire()
            time.sleep(2.5)  # renewed about twice, every ttl/3
            holder = lease.holder()
            assert holder is not None and holder["owner"] == lease.owner and not lease.lost
            assert holder["expires"] > time.time()
        finally:
            lease.release()
        faults = proxy.counts[kind]
    # the probe's create, its refused create and replace, the lease's create, renewals,
    # the delete: every one lost its first answer
    assert faults >= 6
    assert Lease(Location(where.url, direct)).holder() is None


def test_a_store_that_never_answers_is_a_clear_error_in_bounded_time(
        s3_server, bucket, synthetic_store, tiny_model, owner_env, capsys) -> None:
    direct = s3_server.storage_options()
    url = bucket("pub")
    Location(f"{url}/note.json", direct).write_bytes(b"{}")
    zarr.open_group(Location(f"{url}/group", direct).zarr_store(mode="w"), mode="w")
    budget = {"budget_s": 3, "connect_timeout_s": 1, "read_timeout_s": 1}
    with FaultProxy(s3_server.endpoint_url, rate=1.0, delay_s=HELD_S) as proxy:
        opts = {**proxy.storage_options(direct), "retry": budget}
        job = _job(synthetic_store, tiny_model, f"{url}/public", f"{bucket('keys')}/k", opts)
        cases: list[tuple[str, Callable[[], object]]] = [
            ("note.json", lambda: Location(f"{url}/note.json", opts).read_bytes()),
            ("group", lambda: zarr.open_group(Location(f"{url}/group", opts).zarr_store(),
                                              mode="r")),
            ("s3://", lambda: run_encode(job, SerialRegions(), progress=False)),
        ]
        for name, action in cases:
            start = time.monotonic()
            with pytest.raises(StorageUnavailableError, match="did not answer within") as err:
                action()
            assert name in str(err.value)
            # one budget, plus what is not under it (set-up, a wait cut short)
            assert time.monotonic() - start < 3 * budget["budget_s"]
        start = time.monotonic()
        code = main(["validate", f"{url}/group", "--storage-options", json.dumps(opts)])
        assert code == 4 and time.monotonic() - start < 3 * budget["budget_s"]
        assert proxy.faults == proxy.counts["requests"] > 0
    err = capsys.readouterr().err
    assert "did not answer within the retry budget" in err and "Traceback" not in err


def test_retry_settings_have_defaults_in_one_place_and_storage_options_tune_them() -> None:
    opts = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
            "retry": {"read_timeout_s": 2, "budget_s": 30},
            "config_kwargs": {"connect_timeout": 7}}
    fs, _ = Location("s3://bucket/x", opts).filesystem()
    assert isinstance(fs, RetryingS3FileSystem)  # zarr stores find it in fsspec's registry
    assert fs.retry_config == StorageRetryConfig(read_timeout_s=2, budget_s=30)
    assert fs.retries == StorageRetryConfig().s3fs_retries
    # given botocore settings win; the rest come from the retry settings
    assert fs.config_kwargs == {"connect_timeout": 7, "read_timeout": 2, "retries": {
        "mode": "standard", "total_max_attempts": StorageRetryConfig().request_attempts}}
    with pytest.raises(ValueError, match=r"retry\.budget"):
        Location("s3://bucket/x", {"retry": {"budget": 30}}).filesystem()


def test_an_outage_is_never_taken_for_a_missing_or_malformed_store(
        s3_server, bucket, synthetic_store, tiny_model, owner_env) -> None:
    """Every read of the public store's metadata fails: a rerun of a finished encode must
    stop with the outage, not take the store for a broken one and lay it out anew (its
    regions are marked done in the keystore, so they would never be written again)."""
    direct = s3_server.storage_options()
    public, keys = bucket("pub"), bucket("keys")
    run_encode(_job(synthetic_store, tiny_model, f"{public}/c", f"{keys}/c", direct),
               SerialRegions(), progress=False)
    before = objects(Location(f"{public}/c", direct)), objects(Location(f"{keys}/c", direct))
    prefix = f"/{public.removeprefix('s3://')}/"

    def public_metadata(method: str, target: str, headers: list[tuple[str, str]],
                        body: bytes) -> bool:
        path = target.split("?")[0]
        return method in ("GET", "HEAD") and path.startswith(prefix) and path.endswith(
            "zarr.json")

    with FaultProxy(s3_server.endpoint_url, rate=1.0, kinds=("500", "reset", "cut"),
                    match=public_metadata) as proxy:
        opts = {**proxy.storage_options(direct),
                "retry": {"budget_s": 5, "connect_timeout_s": 1, "read_timeout_s": 2}}
        with pytest.raises(StorageUnavailableError, match=r"zarr\.json"):
            run_encode(_job(synthetic_store, tiny_model, f"{public}/c", f"{keys}/c", opts),
                       SerialRegions(), progress=False)
        assert proxy.faults > 0
    after = objects(Location(f"{public}/c", direct)), objects(Location(f"{keys}/c", direct))
    assert after == before
