"""A closed cluster: no other process can reach an encode's Dask cluster, no worker
inherits a secret, and workers hold only the keys derived for their regions; a remote
scheduler is reached over TLS with the operator's certificates, never plain tcp://
unless explicitly allowed."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.secrets import Secret, Secrets
from imambig.config import ClusterSecurity, EncodeConfig, SecretSources
from imambig.errors import ImambigError
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel
from imambig.model.checkpoint import load_model
from imambig.stages.encode.dask_cluster import InsecureClusterWarning, local_cluster
from imambig.stages.encode.dask_regions import DaskRegions
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.images import encode_images
from imambig.stages.encode.plan import EncodeContext, EncodeJob
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from infra.dask_tls import make_certificates
from tests.test_encode import tree_digest

CHUNK = 64  # 300 synthetic items -> 5 regions
SECRET_NAMES = ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY", "IMAMBIG_SIGNING_KEY")

# Run in another process, with no credentials: connect to each address as the issue's
# attacker did (plain tcp://), with a certificate of its own, and with none, send
# "identity", and fetch the scheduler's info page; print what answered.
PROBE = r"""
import asyncio, json, ssl, sys, urllib.request
from distributed import Security
from distributed.comm import connect

def no_certificate():
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

async def identity(address, **args):
    comm = await connect(address, timeout=3, **args)
    await comm.write({"op": "identity", "reply": True})
    reply = await comm.read()
    await comm.close()
    return "CONNECTED " + str(reply.get("type") if isinstance(reply, dict) else reply)

def page(url):
    with urllib.request.urlopen(url, timeout=3) as r:
        return f"CONNECTED http {r.status}"

async def attempt(job):
    try:  # an HTTP server never answers a Dask handshake: bounded here
        return await asyncio.wait_for(job, 10)
    except Exception as exc:
        return type(exc).__name__

async def main(hostports):
    own = Security.temporary().get_connection_args("client")
    jobs = {}
    for hp in hostports:
        jobs[(hp, "tcp")] = attempt(identity(f"tcp://{hp}"))
        jobs[(hp, "tls, another certificate")] = attempt(identity(f"tls://{hp}", **own))
        jobs[(hp, "tls, no certificate")] = attempt(
            identity(f"tls://{hp}", ssl_context=no_certificate()))
        # The scheduler's HTTP pages (workers, tasks, logs), if this port serves them
        jobs[(hp, "http")] = attempt(asyncio.to_thread(
            page, f"http://{hp}/info/main/workers.html"))
    results = await asyncio.gather(*jobs.values())
    out = {}
    for (hp, how), result in zip(jobs, results):
        out.setdefault(hp, {})[how] = result
    print(json.dumps(out))

asyncio.run(main(sys.argv[1:]))
"""


def _job(images: Location, model: Location, root: Path, tag: str,
         sources: SecretSources = SecretSources()) -> EncodeJob:
    return EncodeJob(images=images, model=model, public_root=Location(str(root / f"public-{tag}")),
                     keys_root=Location(str(root / f"keys-{tag}")),
                     config=EncodeConfig(region_items=CHUNK), secrets=sources)


def _clean_env() -> dict[str, str]:
    """This process's environment without any secret (a stranger's process)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("IMAMBIG_", "CUSTOM_"))}


def _worker_processes() -> list[psutil.Process]:
    """Dask's worker processes of this test: spawned children of this process."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue  # exited meanwhile
    return found


def _listening(proc: psutil.Process) -> list[int]:
    return sorted({c.laddr.port for c in proc.net_connections(kind="tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"})


def _anonymous_memory(pid: int) -> Iterator[bytes]:
    """The readable anonymous mappings (heap, arenas, stacks) of a process of ours: where
    a Python process keeps the bytes it was sent or read."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            path = fields[5] if len(fields) > 5 else ""
            if not fields[1].startswith("r") or (path and path not in ("[heap]", "[stack]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue  # a guard page, or gone since the listing


def _secret_forms(value_b64: str) -> list[bytes]:
    """Every form a secret can take in a process: its base64 text and its raw bytes."""
    return [value_b64.encode(), base64.b64decode(value_b64)]


def _check_item(job: EncodeJob, report, sources: SecretSources, items: list[int]) -> None:
    """Records and keys of ``items`` equal those made in this process from the owner's
    own secrets (not from the keys the workers were sent)."""
    model, _, _ = load_model(job.model)
    noise = NoiseModel.load(_noise_file(job, report))
    owner = Secrets(sources)
    decoys = DecoyMap.for_owner(noise, owner.owner_secret)
    public = PublicStore.open(report.plan.public)
    keystore = Keystore.open(report.plan.keystore, LocalKeyProvider.from_secrets(owner))
    store = open_image_store(job.images)
    for i in items:
        alone = encode_images(model, noise, decoys, store.read(slice(i, i + 1)), report.precision)
        mask, values = public.read(np.array([i]))
        assert np.array_equal(mask[0], alone.mask[0])
        assert values[0].tobytes() == alone.values[0].tobytes()
        assert keystore.keys([i])[0] == alone.keys[0]


def _noise_file(job: EncodeJob, report) -> Location:
    return job.model.join(report.plan.noise_file)  # the fit the run checked


# ---------------------------------------------------------------------------
# The local cluster
# ---------------------------------------------------------------------------


def test_another_local_process_cannot_connect_to_an_encode_cluster(
        synthetic_store, tiny_model, tmp_path, owner_env):
    job = _job(synthetic_store, tiny_model, tmp_path, "a")
    probes: dict[str, dict[str, str]] = {}
    ports: dict[str, list[int]] = {}

    def probe(manifest, done, total) -> None:
        if probes:
            return
        # The encode's scheduler and nannies listen in this process, its workers in
        # their own processes: every port they listen on.
        ports["driver"] = _listening(psutil.Process())
        ports["workers"] = [p for w in _worker_processes() for p in _listening(w)]
        addresses = [f"127.0.0.1:{p}" for p in ports["driver"] + ports["workers"]]
        out = subprocess.run([sys.executable, "-c", PROBE, *addresses], env=_clean_env(),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        probes.update(json.loads(out.stdout))

    report = run_encode(job, DaskRegions(n_workers=2), on_region=probe, progress=False)
    # Scheduler + 2 nannies here, 2 workers there, at least.
    assert len(ports["driver"]) >= 3 and len(ports["workers"]) >= 2, ports
    connected = {hp: how for hp, tries in probes.items() for how, result in tries.items()
                 if result.startswith("CONNECTED")}
    assert not connected, f"another process reached the cluster: {connected}"
    assert len(probes) == len(ports["driver"]) + len(ports["workers"])
    # ... and the encode finished regardless.
    assert report.encoded == 300 and report.workers == 2


def test_no_worker_holds_a_secret_it_does_not_use(synthetic_store, tiny_model, tmp_path,
                                                  owner_env, monkeypatch):
    # The owner secret under a name of the operator's choosing, besides the usual ones.
    custom = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("CUSTOM_OWNER_SECRET", custom)
    sources = SecretSources(owner_secret="env:CUSTOM_OWNER_SECRET")
    values = {**owner_env, "CUSTOM_OWNER_SECRET": custom}
    job = _job(synthetic_store, tiny_model, tmp_path, "b", sources)
    seen: dict[str, object] = {}

    def inspect(manifest, done, total) -> None:
        if seen:
            return
        workers = _worker_processes()
        seen["workers"] = len(workers)
        environs = {w.pid: Path(f"/proc/{w.pid}/environ").read_bytes() for w in workers}
        seen["names"] = sorted({name for env in environs.values() for name in values
                                if re.search(rb"(^|\0)" + name.encode() + rb"=", env)})
        seen["values_in_environ"] = sorted(
            name for name, v in values.items() for env in environs.values()
            if any(form in env for form in _secret_forms(v)))
        # Memory, not only the environment: the owner's secrets never reach a worker.
        # The keystore's data key (which they use) must: the search itself works.
        data_key = _data_key(job, sources)
        found: dict[str, int] = {}
        try:
            for w in workers:
                for block in _anonymous_memory(w.pid):
                    for name, v in values.items():
                        if any(form in block for form in _secret_forms(v)):
                            found[name] = found.get(name, 0) + 1
                    if data_key in block:
                        found["data key"] = found.get("data key", 0) + 1
        except PermissionError:  # ptrace restricted (yama ptrace_scope >= 2)
            found = {"unreadable": 1}
        seen["in_memory"] = found

    report = run_encode(job, DaskRegions(n_workers=2), on_region=inspect, progress=False)
    assert seen["workers"] == 2
    assert seen["names"] == [], f"worker environments hold {seen['names']}"
    assert seen["values_in_environ"] == []
    if seen["in_memory"] != {"unreadable": 1}:
        assert set(seen["in_memory"]) == {"data key"}, seen["in_memory"]  # type: ignore[arg-type]
    # The driver's environment is back as it was.
    assert all(os.environ[name] == value for name, value in values.items())

    # The records and keys are right: as the owner's own secrets make them, and the same
    # bytes as an encode in this process.
    assert report.encoded == 300
    _check_item(job, report, sources, [0, 64, 299])
    serial = _job(synthetic_store, tiny_model, tmp_path, "serial", sources)
    run_encode(serial, SerialRegions(), progress=False)
    assert tree_digest(job.public_root) == tree_digest(serial.public_root)
    assert tree_digest(job.keys_root) == tree_digest(serial.keys_root)
    if seen["in_memory"] == {"unreadable": 1}:
        pytest.skip("worker memory is not readable here (ptrace restricted); the "
                    "environments were checked")


def _data_key(job: EncodeJob, sources: SecretSources) -> bytes:
    """The data key of the job's keystore version (already laid out by the driver)."""
    provider = LocalKeyProvider.from_secrets(Secrets(sources))
    version = EncodeContext.open(job).version
    attrs = Keystore.open(job.keys_root.join(version), provider).attrs
    return provider.unwrap(base64.b64decode(attrs["wrapped_data_key"]))


def test_workers_environment_through_the_cluster(synthetic_store, tiny_model, tmp_path,
                                                 owner_env):
    """What a task on a worker sees in os.environ (the issue's attack, from inside)."""
    from distributed import Client

    job = _job(synthetic_store, tiny_model, tmp_path, "c")
    with local_cluster(2) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert all(name not in os.environ for name in SECRET_NAMES)  # withheld meanwhile
        report = run_encode(job, DaskRegions(cluster=cluster), progress=False)
        with Client(cluster) as client:  # the cluster's own credentials
            environs = client.run(lambda: dict(os.environ))
            pids = client.run(os.getpid)
        # A worker restarted by its nanny starts from the same scrubbed environment.
        victim = next(iter(cluster.workers.values()))
        os.kill(victim.process.pid, signal.SIGKILL)
        with Client(cluster) as client:
            _wait(lambda: len(now := client.run(os.getpid, on_error="ignore")) == 2
                  and set(now.values()) != set(pids.values()), 90)
            restarted = {k: v for k, v in client.run(lambda: dict(os.environ)).items()
                         if k not in environs}
    environs.update(restarted)
    assert report.encoded == 300 and len(restarted) == 1 and len(environs) == 3
    for worker, env in environs.items():
        held = [n for n in SECRET_NAMES if n in env]
        assert not held, f"{worker} holds {held}"
        assert not [v for v in owner_env.values() if v in env.values()]
    assert all(os.environ[name] == owner_env[name] for name in SECRET_NAMES)  # restored


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.2)


# ---------------------------------------------------------------------------
# A remote cluster
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "127.0.0.1:8786",
                                     "ws://127.0.0.1:8786"])
def test_a_plain_remote_scheduler_is_refused(address) -> None:
    with pytest.raises(ImambigError, match="tls://"):
        DaskRegions(address)


def test_plain_tcp_only_when_explicitly_allowed_and_then_loudly() -> None:
    with pytest.warns(InsecureClusterWarning, match="INSECURE"):
        regions = DaskRegions("tcp://127.0.0.1:8786",
                              security=ClusterSecurity(allow_plain_tcp=True))
    assert regions.security is None


def test_tls_scheduler_needs_the_operators_certificates(tmp_path) -> None:
    with pytest.raises(ImambigError, match="certificate"):
        DaskRegions("tls://127.0.0.1:8786")
    with pytest.raises(ImambigError, match="not found"):
        DaskRegions("tls://127.0.0.1:8786", security=ClusterSecurity(
            tls_ca_file=str(tmp_path / "ca.pem"), tls_cert_file=str(tmp_path / "c.pem"),
            tls_key_file=str(tmp_path / "k.pem")))


def test_cli_refuses_a_plain_scheduler_before_any_work(synthetic_store, tiny_model, tmp_path,
                                                       owner_env) -> None:
    keys = tmp_path / "keys"
    out = subprocess.run(
        [sys.executable, "-m", "imambig.cli", "encode", "--images", str(synthetic_store),
         "--model", str(tiny_model), "--public", str(tmp_path / "public"), "--keys",
         str(keys), "--dask-address", "tcp://127.0.0.1:8786"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "refusing the plain tcp://" in out.stderr and "--dask-allow-plain-tcp" in out.stderr
    assert not keys.exists()


@pytest.fixture()
def tls_cluster(tmp_path) -> Iterator[tuple[str, dict[str, Path]]]:
    """A scheduler and a worker started as an operator would (``dask scheduler``,
    ``dask worker``), on TLS with certificates from ``infra.dask_tls``, and no owner
    secret anywhere in their environment."""
    certs = make_certificates(tmp_path / "tls")
    # Each certificate file holds its key too (the form infra.dask_tls writes).
    tls = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cluster"])]
    info = tmp_path / "scheduler.json"
    env = _clean_env()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--protocol", "tls",
         "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info),
         *tls], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)]
    try:
        _wait(lambda: info.exists() and info.stat().st_size > 0, 60)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard", *tls], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        yield address, certs
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_tls_cluster_encodes_with_the_operators_certificates(
        synthetic_store, tiny_model, tmp_path, owner_env, tls_cluster):
    from distributed import Client

    address, certs = tls_cluster
    assert address.startswith("tls://")
    security = ClusterSecurity(tls_ca_file=str(certs["ca"]), tls_cert_file=str(certs["client"]))
    regions = DaskRegions(address, security=security)
    with Client(address, security=regions.security, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
    job = _job(synthetic_store, tiny_model, tmp_path, "tls")
    # The workers hold no secret of the owner: the keys they need come with the tasks.
    report = run_encode(job, regions, progress=False)
    assert report.encoded == 300
    serial = _job(synthetic_store, tiny_model, tmp_path, "serial")
    run_encode(serial, SerialRegions(), progress=False)
    assert tree_digest(job.public_root) == tree_digest(serial.public_root)
    assert tree_digest(job.keys_root) == tree_digest(serial.keys_root)
    # Without the client certificate the scheduler does not answer.
    out = subprocess.run([sys.executable, "-c", PROBE, address.removeprefix("tls://")],
                         env=_clean_env(), capture_output=True, text=True, timeout=120)
    tries = json.loads(out.stdout)[address.removeprefix("tls://")]
    assert not [how for how, r in tries.items() if r.startswith("CONNECTED")], tries


def test_region_keys_travel_without_the_owners_secrets(owner_env) -> None:
    """What a task argument carries: derived keys, shown nowhere."""
    import pickle

    from imambig.stages.encode.region_keys import RegionKeys

    keys = RegionKeys("m", Secret(b"s" * 32), Secret(b"t" * 32), Secret(b"d" * 32), b"w")
    blob = pickle.dumps(keys)
    assert pickle.loads(blob) == keys and hash(pickle.loads(blob)) == hash(keys)
    assert "s" * 32 not in repr(keys) and "Secret" not in repr(keys)
    for value in owner_env.values():
        assert base64.b64decode(value) not in blob
    with pytest.raises(TypeError, match="do not travel"):
        pickle.dumps(Secrets())
