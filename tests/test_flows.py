"""The pipeline through a real Prefect server and a real S3 server, read back through
the Prefect API; secrets never reach Prefect; bad parameters fail before any work."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.demo_images import write_demo_images
from imambig.config import PRESETS, EncodeConfig, SecretSources
from infra.prefect_server import PrefectServer


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with PrefectServer(tmp_path_factory.mktemp("prefect")) as server:
        yield server


def api(server: PrefectServer, path: str, body: dict | None = None) -> list | dict:
    req = urllib.request.Request(f"{server.api_url}{path}", method="POST",
                                 data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def run_flow(module: str, params: dict, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "--params", json.dumps(params)],
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def pipeline_run(prefect_server, s3_server, tmp_path_factory, celeba_dir_or_none):
    root = tmp_path_factory.mktemp("pipeline")
    secret_values = {n: base64.b64encode(secrets.token_bytes(32)).decode()
                     for n in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY",
                               "IMAMBIG_SIGNING_KEY")}
    env = {**os.environ, **prefect_server.env(), **s3_server.env(), **secret_values}
    if celeba_dir_or_none is not None:
        source, crop, limit = str(celeba_dir_or_none), 178, 300
    else:
        source, crop, limit = str(write_demo_images(root / "faces", 300)), None, None
    tag = secrets.token_hex(4)
    pub, keys = s3_server.create_bucket(f"pub-{tag}"), s3_server.create_bucket(f"keys-{tag}")
    # Locations as URL strings and a partial config: what is left out takes its default.
    config = {"ingest": {"split": "identity:0.8", "crop": crop, "limit": limit},
              # the tiny model for 3 epochs, not the default recipe (small, 24 minutes)
              "train": {"model": dataclasses.asdict(PRESETS["tiny"]), "epochs": 3,
                        "minutes": None, "batch_size": 32, "loss": "bce", "ema": 0.0},
              "encode": {"region_items": 64},
              "evaluate": {"max_items": 48, "attacks": ["random", "magnitude", "position"]}}
    params = {"source": source, "workdir": str(root / "work"), "public_root": f"{pub}/faces",
              "keys_root": f"{keys}/faces", "publish_root": str(root / "published"),
              "config": config, "dask_workers": 2,
              "grant_to": "imambig-pub-v1:" + base64.urlsafe_b64encode(
                  secrets.token_bytes(32)).decode().rstrip("=")}
    proc = run_flow("flows.pipeline", params, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    return summary, secret_values, root


@pytest.fixture(scope="module")
def celeba_dir_or_none() -> Path | None:
    from tests.conftest import shared_data_dir

    path = shared_data_dir() / "celeba-6k"
    return path if (path / "img_align_celeba").is_dir() else None


def test_pipeline_runs_and_tasks_completed_with_artifacts(pipeline_run, prefect_server):
    summary, _, _ = pipeline_run
    flows = api(prefect_server, "/flow_runs/filter", {"limit": 200})
    assert len(flows) >= 7, [f["name"] for f in flows]
    assert all(f["state_type"] == "COMPLETED" for f in flows), [
        (f["name"], f["state_type"]) for f in flows]
    tasks = api(prefect_server, "/task_runs/filter", {"limit": 200})
    assert tasks and all(t["state_type"] == "COMPLETED" for t in tasks)
    regions = [t for t in tasks if t["name"].startswith("encode region")]
    assert len(regions) == 5  # 300 items in chunks of 64
    artifacts = {a["key"]: a for a in api(prefect_server, "/artifacts/filter", {"limit": 200})
                 if a.get("key")}
    for key in ("ingest-report", "training-report", "encode-progress", "encode-summary",
                "publication", "evaluation-metrics", "evaluation-report", "pipeline-summary"):
        assert key in artifacts, sorted(artifacts)
    assert float(artifacts["encode-progress"]["data"]) == pytest.approx(100.0)
    # images/s per worker (host:pid), a version per finished region
    throughput = [a["data"] for a in api(prefect_server, "/artifacts/filter", {
        "artifacts": {"key": {"any_": ["encode-throughput"]}}, "limit": 50})]
    assert throughput and all("over the last minute" in t for t in throughput)
    assert any(re.search(r"^\| \S+:\d+ \| [\d,]+ \| [\d.]+ \| [\d.]+ \|$", t, re.M)
               for t in throughput), throughput[-1]
    table = artifacts["evaluation-metrics"]["data"]
    rows = json.loads(table) if isinstance(table, str) else table
    by_name = {r["name"]: r for r in rows}
    assert {"authorized", "public as is", "random guess"} <= set(by_name)
    assert by_name["random guess"]["recall"] == pytest.approx(0.5, abs=0.1)
    assert 20 <= by_name["authorized"]["n_items"] <= 48  # the test split, capped at 48
    assert by_name["authorized"]["psnr"] > by_name["public as is"]["psnr"]
    assert summary["written"] == 300 and summary["public_store"].startswith("s3://")
    # logs written inside the Dask workers' tasks reach the API (and so the UI)
    region_ids = [t["id"] for t in regions]
    logs = api(prefect_server, "/logs/filter",
               {"logs": {"task_run_id": {"any_": region_ids}}, "limit": 200})
    assert any("encoded in" in entry["message"] for entry in logs), logs[:3]
    flow_names = {f["name"] for f in api(prefect_server, "/flows/filter")}
    assert {"pipeline", "ingest", "train", "encode", "publish", "grant", "evaluate"} <= flow_names


def test_secrets_never_reach_prefect(pipeline_run, prefect_server):
    _, secret_values, _ = pipeline_run
    dumps = [json.dumps(api(prefect_server, path, {"limit": 200})) for path in (
        "/flow_runs/filter", "/task_runs/filter", "/artifacts/filter", "/logs/filter",
        "/deployments/filter", "/block_documents/filter")]
    database = prefect_server.database.read_bytes()
    for value in secret_values.values():
        raw = base64.b64decode(value)
        for text in dumps:
            assert value not in text
            assert raw.hex() not in text
        assert value.encode() not in database and raw not in database


def test_bad_parameters_fail_before_any_work(prefect_server, tmp_path):
    env = {**os.environ, **prefect_server.env(),
           "IMAMBIG_OWNER_SECRET": base64.b64encode(secrets.token_bytes(32)).decode(),
           "IMAMBIG_KEYSTORE_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    code = f"""
from flows.encode import encode_flow
state = encode_flow(images={str(tmp_path / 'nope')!r}, model={str(tmp_path / 'm')!r},
                    public_root={str(tmp_path / 'stores')!r},
                    keys_root={str(tmp_path / 'stores' / 'keys')!r}, return_state=True)
print("STATE", state.type.value, state.message)
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert "STATE FAILED" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "share a root" in out.stdout + out.stderr
    assert not (tmp_path / "stores").exists()


def _run_id(server: PrefectServer, flow_name: str) -> str:
    """The pipeline's completed run of ``flow_name`` (other tests on this server leave
    failed runs of the same flows behind)."""
    flows = api(server, "/flows/filter", {"flows": {"name": {"any_": [flow_name]}}})
    runs = api(server, "/flow_runs/filter", {
        "flows": {"id": {"any_": [flows[0]["id"]]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "START_TIME_DESC", "limit": 1})
    assert runs, f"no completed {flow_name} run"
    return runs[0]["id"]


def _show(page, url: str, text: str, server: PrefectServer, console: list[str],
          tries: int = 4, wait_ms: int = 45_000) -> None:
    """Open ``url`` until ``text`` shows; a page that came up half-rendered (a slow first
    bundle load on a busy machine) is loaded again. Failing, say what the page showed."""
    for _ in range(tries):
        page.goto(url, wait_until="load", timeout=wait_ms)
        try:
            page.get_by_text(text, exact=False).first.wait_for(timeout=wait_ms)
            return
        except Exception:  # retried, then reported with the page's text
            continue
    body = page.locator("body").inner_text(timeout=5_000)[:2000]
    raise AssertionError(f"{text!r} never showed on {url}\npage: {body!r}\n"
                         f"console: {console[-20:]}\nserver log:\n{server.log_tail(20)}")


def test_prefect_ui_shows_the_run_its_tasks_and_the_metrics_table(pipeline_run,
                                                                   prefect_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed")
    ui = prefect_server.ui_url
    shots = Path(os.environ.get("IMAMBIG_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    with sync_api.sync_playwright() as p:
        # --disable-dev-shm-usage: containers often give /dev/shm 64 MB, too little for a
        # tab rendering the Prefect UI, which then dies blank.
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        _show(page, f"{ui}/runs/flow-run/{_run_id(prefect_server, 'pipeline')}", "Completed",
              prefect_server, console)
        page.get_by_text("Subflow Runs", exact=True).first.click()
        page.get_by_text("encode", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "pipeline-run.png"), full_page=True)

        _show(page, f"{ui}/runs/flow-run/{_run_id(prefect_server, 'encode')}", "Completed",
              prefect_server, console)
        page.get_by_text("Task Runs", exact=True).first.click()
        page.get_by_text("encode region", exact=False).first.wait_for(timeout=90_000)
        page.screenshot(path=str(shots / "encode-task-runs.png"), full_page=True)

        metrics = api(prefect_server, "/artifacts/filter",
                      {"artifacts": {"key": {"any_": ["evaluation-metrics"]}}})[0]
        _show(page, f"{ui}/artifacts/artifact/{metrics['id']}", "random guess",
              prefect_server, console)
        assert page.get_by_text("public as is", exact=False).count() >= 1
        page.screenshot(path=str(shots / "evaluation-metrics.png"), full_page=True)
        browser.close()
    assert (shots / "evaluation-metrics.png").stat().st_size > 10_000


def test_scheduled_deployment_runs_end_to_end(synthetic_store, tiny_model, tmp_path):
    # A server of its own: scheduled runs must not mix with the pipeline test's runs.
    server = PrefectServer(tmp_path / "prefect",
                           settings={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"})
    env = {**os.environ, **{n: base64.b64encode(secrets.token_bytes(32)).decode()
                            for n in ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY")},
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with server:
        env.update(server.env())
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--images", str(synthetic_store), "--model",
             str(tiny_model), "--public", str(tmp_path / "public"), "--keys",
             str(tmp_path / "keys"), "--chunk-items", "128", "--cron", "* * * * *"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            deadline, done = time.monotonic() + 420, None
            while time.monotonic() < deadline and proc.poll() is None and done is None:
                time.sleep(2)
                deps = {d["name"]: d for d in api(server, "/deployments/filter")}
                if "nightly-reencode" not in deps:
                    continue
                runs = api(server, "/flow_runs/filter", {"deployments": {"id": {
                    "any_": [deps["nightly-reencode"]["id"]]}}})
                done = next((r for r in runs if r["state_type"] in ("COMPLETED", "FAILED",
                                                                   "CRASHED")), None)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        assert deps["nightly-reencode"]["schedules"], "the nightly deployment has a schedule"
        assert "full-reencode" in deps and not deps["full-reencode"]["schedules"]
        assert done is not None, "no scheduled run finished"
        assert done["state_type"] == "COMPLETED", done["state"]
        assert done["auto_scheduled"] or done["state_name"] in ("Completed",)
        # What the API (and so the UI's run form) shows: a location as {url, options},
        # the config whole, and its schema with the config's defaults.
        nightly = deps["nightly-reencode"]
        assert nightly["parameters"]["images"]["url"] == str(synthetic_store)
        assert nightly["parameters"]["config"]["region_items"] == 128
        schema = nightly["parameter_openapi_schema"]
        config = schema["properties"]["config"]
        assert config["default"] == dataclasses.asdict(EncodeConfig())
        fields = schema["definitions"]["EncodeConfig"]["properties"]
        assert {"k_public", "region_items", "micro_batch"} <= set(fields)
        assert schema["properties"]["secrets"]["default"] == dataclasses.asdict(SecretSources())
    assert (tmp_path / "public" / "current.json").exists()
