"""Static checks of the deployment files under infra/ (no Docker engine or cluster needed).

Compose: the services, 127.0.0.1-only ports, healthchecks, no secret values, single-
threaded Dask. Kubernetes: identity of every object, resources on every container,
pinned images, kustomization consistency, Secrets only as templates, network policies
that select real pods. Plus the Dockerfile, the Prefect deployments, the shell scripts,
and the bucket job against the local S3 server.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imambig.stages.encode.dask_cluster import WORKER_THREADS

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
K8S = INFRA / "k8s"
SCRIPTS = INFRA / "scripts"

YAML_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in INFRA.rglob(ext))
# Not Kubernetes objects: kustomize's own configuration.
KUSTOMIZE_FILES = {"kustomization.yaml", "kustomizeconfig.yaml"}

SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|_KEY$)")
# The whole value is one reference: ${VAR}, ${VAR:-default} or ${VAR:?message}.
VAR_REF = re.compile(r"^\$\{[A-Z0-9_]+(?::?[-?][^}]*)?\}$")
ANY_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
PLACEHOLDER = "change-me"

# Services that hold the imambig secrets: the one that drives encodes (Dask workers get
# only the keys derived for their regions, with the tasks).
ENCODERS_COMPOSE = {"prefect-worker-cpu"}
ENCODERS_K8S = {"Deployment/prefect-worker-cpu"}
TLS_DIR = "/etc/dask-tls"


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_all(COMPOSE_DIR / "docker-compose.yml")[0]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return load_all(K8S / "kustomization.yaml")[0]


@pytest.fixture(scope="module")
def k8s_docs(kustomization: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(file, object) for every object the kustomization applies."""
    return [(name, doc) for name in kustomization["resources"] for doc in load_all(K8S / name)]


def env_dict(env: Any) -> dict[str, str]:
    """A compose or Kubernetes-style environment as a dict (list forms included)."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    if env and isinstance(env[0], dict):  # Kubernetes [{name, value}]
        return {e["name"]: str(e.get("value", "<from>")) for e in env}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)


def pod_specs(docs: list[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any], dict]]:
    """(id, pod spec, pod labels) of every pod the manifests make, DaskCluster's included."""
    for _, doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            template = doc["spec"]["template"]
            yield f"{kind}/{name}", template["spec"], template["metadata"].get("labels", {})
        elif kind == "DaskCluster":
            for role in ("worker", "scheduler"):
                part = doc["spec"][role]
                # The operator adds these labels to the pods it creates.
                labels = {"dask.org/cluster-name": name, "dask.org/component": role}
                labels.update((part.get("metadata") or {}).get("labels", {}))
                yield f"{kind}/{name}:{role}", part["spec"], labels


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


# ---------------------------------------------------------------------------
# every YAML file
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} has no document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_yaml_files_were_found() -> None:
    names = {p.name for p in YAML_FILES}
    assert {"docker-compose.yml", "kustomization.yaml", "prefect.yaml"} <= names


# ---------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"postgres", "prefect-server", "prefect-worker-cpu", "dask-scheduler",
                "dask-worker", "seaweedfs", "create-buckets"}
    assert expected <= set(services), expected - set(services)
    assert services["dask-worker"]["deploy"]["replicas"] == 2
    assert "server" in services["seaweedfs"]["command"]
    assert "-s3" in services["seaweedfs"]["command"]
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    server = services["prefect-server"]
    assert "prefect server start --host 0.0.0.0" in " ".join(server["command"])
    server_env = env_dict(server["environment"])
    assert server_env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "@postgres:5432/" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    worker = " ".join(services["prefect-worker-cpu"]["command"])
    assert "--pool cpu" in worker
    assert set(compose.get("volumes", {})) >= {"postgres-data", "seaweedfs-data"}


def test_compose_ports_are_bound_to_localhost(compose: dict[str, Any]) -> None:
    published = 0
    for name, svc in compose["services"].items():
        assert svc.get("network_mode") != "host", f"{name} shares the host network"
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                # HOST_IP:HOST_PORT:CONTAINER_PORT; a bare "8080:80" binds every interface.
                parts = ANY_VAR.sub("X", str(port)).split(":")
                assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: {port!r}"
    assert published, "no published ports found: the check saw nothing"


def test_compose_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        if svc.get("restart") == "no":
            continue  # one-shot jobs are waited for with service_completed_successfully
        test = (svc.get("healthcheck") or {}).get("test")
        assert test, f"{name} has no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: {test}"
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"


def test_compose_holds_no_secret_values(compose: dict[str, Any]) -> None:
    checked = 0
    for name, svc in compose["services"].items():
        for key, value in env_dict(svc.get("environment")).items():
            if SECRET_NAME.search(key):
                checked += 1
                assert VAR_REF.match(value), f"{name}: {key} must be a ${{VAR}} reference"
            # A URL with credentials in it: the password part must be a reference too.
            masked = ANY_VAR.sub("\0", value)
            for password in re.findall(r"://[^:/@]*:([^@/]*)@", masked):
                checked += 1
                assert password == "\0", f"{name}: {key} has a password in clear"
        for key in env_dict((svc.get("build") or {}).get("args")):
            assert not SECRET_NAME.search(key), f"{name}: secret as build arg {key}"
        assert "env_file" not in svc, f"{name}: env_file hands every variable to one service"
    assert checked >= 6, "expected the S3, Postgres and imambig secrets to be referenced"
    for name, cfg in (compose.get("configs") or {}).items():
        content = cfg.get("content", "")
        for field in ("accessKey", "secretKey", "password", "secret"):
            for value in re.findall(rf'"{field}"\s*:\s*"([^"]*)"', content):
                assert VAR_REF.match(value), f"config {name}: {field} in clear"


def test_compose_gives_imambig_secrets_only_to_encoders(compose: dict[str, Any]) -> None:
    holders = {
        name for name, svc in compose["services"].items()
        if {"IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY"} & set(env_dict(svc.get("environment")))
    }
    assert holders == ENCODERS_COMPOSE


def test_compose_variables_are_all_in_env_example(compose: dict[str, Any]) -> None:
    text = (COMPOSE_DIR / "docker-compose.yml").read_text()
    used = set(ANY_VAR.findall(text))
    example: dict[str, str] = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert used, "no ${VAR} found in the compose file"
    assert used <= set(example), f"missing from .env.example: {sorted(used - set(example))}"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value == PLACEHOLDER, f".env.example: {key} must be a placeholder"


def test_compose_env_file_is_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/compose/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "infra/compose/.env would be committed"
    kept = subprocess.run(["git", "check-ignore", "-q", "infra/compose/.env.example"], cwd=ROOT)
    assert kept.returncode == 1, ".env.example must stay tracked"


def test_compose_dask_computes_on_one_thread(compose: dict[str, Any]) -> None:
    worker = compose["services"]["dask-worker"]
    cmd = [str(c) for c in worker["command"]]
    assert cmd[cmd.index("--nthreads") + 1] == str(WORKER_THREADS)
    assert cmd[cmd.index("--nworkers") + 1] == "1"
    for name in ("dask-worker", "prefect-worker-cpu"):
        env = env_dict(compose["services"][name]["environment"])
        assert env["OMP_NUM_THREADS"] == "1", name


def _tls_args(args: list[str]) -> dict[str, str]:
    return {flag: args[args.index(flag) + 1] for flag in ("--tls-ca-file", "--tls-cert")
            if flag in args}


def test_compose_dask_speaks_tls_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    scheduler = [str(c) for c in services["dask-scheduler"]["command"]]
    worker = [str(c) for c in services["dask-worker"]["command"]]
    assert scheduler[scheduler.index("--protocol") + 1] == "tls"
    assert worker[2].startswith("tls://dask-scheduler:")
    for args in (scheduler, worker):
        assert _tls_args(args) == {"--tls-ca-file": f"{TLS_DIR}/ca.pem",
                                   "--tls-cert": f"{TLS_DIR}/cluster.pem"}
    client = env_dict(services["prefect-worker-cpu"]["environment"])
    assert client["DASK_SCHEDULER_ADDRESS"].startswith("tls://")
    assert client["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] == f"{TLS_DIR}/client.pem"
    # The certificates come from the one-shot job, into a volume the three mount.
    assert services["dask-tls"]["restart"] == "no"
    assert "infra.dask_tls" in " ".join(services["dask-tls"]["command"])
    for name in ("dask-scheduler", "dask-worker", "prefect-worker-cpu"):
        assert f"dask-tls:{TLS_DIR}:ro" in services[name]["volumes"], name
    assert "no imambig secret" in (COMPOSE_DIR / "docker-compose.yml").read_text().lower()


# ---------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------


def test_k8s_every_document_has_identity() -> None:
    files = [p for p in K8S.glob("*.yaml") if p.name not in KUSTOMIZE_FILES]
    assert len(files) >= 6
    for path in files:
        for doc in load_all(path):
            assert doc.get("apiVersion"), f"{path.name}: a document without apiVersion"
            assert doc.get("kind"), f"{path.name}: a document without kind"
            assert (doc.get("metadata") or {}).get("name"), f"{path.name}: {doc['kind']} unnamed"


def test_kustomization_lists_existing_files(kustomization: dict[str, Any]) -> None:
    listed = kustomization["resources"]
    for name in [*listed, *kustomization.get("configurations", [])]:
        assert (K8S / name).is_file(), f"kustomization names missing {name}"
    manifests = {p.name for p in K8S.glob("*.yaml")} - KUSTOMIZE_FILES - {"secret.example.yaml"}
    assert set(listed) == manifests, "every manifest (and only those) belongs in resources"
    assert kustomization["namespace"] == "imambig"


def test_k8s_secrets_are_templates_only(
    kustomization: dict[str, Any], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    assert "secret.example.yaml" not in kustomization["resources"]
    assert "secretGenerator" not in kustomization
    assert not [f for f, d in k8s_docs if d["kind"] == "Secret"], "a Secret would be applied"
    template = load_all(K8S / "secret.example.yaml")
    assert {d["metadata"]["name"] for d in template} == {
        "imambig-postgres", "imambig-s3", "imambig-keys", "imambig-signing",
        "imambig-dask-tls", "imambig-dask-tls-client"}
    for doc in template:
        assert doc["kind"] == "Secret"
        assert "data" not in doc, "base64 `data` hides real values; use stringData"
        for key, value in doc["stringData"].items():
            assert value == PLACEHOLDER, f"{doc['metadata']['name']}.{key} is not a placeholder"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", "infra/k8s/secret.yaml"], cwd=ROOT)
        assert ignored.returncode == 0, "a filled-in infra/k8s/secret.yaml would be committed"


def test_k8s_containers_have_requests_and_limits(
    k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    seen = 0
    for pod, spec, _ in pod_specs(k8s_docs):
        for c in containers(spec):
            seen += 1
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part) or {}), f"{pod}/{c['name']}: {part}"
    assert seen >= 7  # postgres, migrate, server, 2 workers, dask worker and scheduler


def test_images_are_pinned(
    compose: dict[str, Any], k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    images = [svc["image"] for svc in compose["services"].values() if "image" in svc]
    images += [c["image"] for _, spec, _ in pod_specs(k8s_docs) for c in containers(spec)]
    assert len(images) >= 10
    for image in images:
        if "@sha256:" in image:
            continue
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{image} is not pinned to a version"


def test_k8s_pods_meet_restricted_pod_security(
    k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    # The namespace enforces the `restricted` profile: a pod without these is rejected.
    namespace = next(d for _, d in k8s_docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod, spec, _ in pod_specs(k8s_docs):
        ctx = spec.get("securityContext") or {}
        assert ctx.get("runAsNonRoot") is True, pod
        assert ctx.get("runAsUser", 0) != 0, pod
        assert (ctx.get("seccompProfile") or {}).get("type") == "RuntimeDefault", pod
        for c in containers(spec):
            cctx = c.get("securityContext") or {}
            assert cctx.get("allowPrivilegeEscalation") is False, f"{pod}/{c['name']}"
            assert cctx.get("capabilities", {}).get("drop") == ["ALL"], f"{pod}/{c['name']}"


def test_dask_cluster_workers_are_single_threaded(
    k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    clusters = [d for _, d in k8s_docs if d["kind"] == "DaskCluster"]
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    worker = cluster["spec"]["worker"]
    assert worker["replicas"] >= 2
    (container,) = worker["spec"]["containers"]
    args = [str(a) for a in container["args"]]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--nthreads") + 1] == str(WORKER_THREADS)
    assert env_dict(container["env"])["OMP_NUM_THREADS"] == "1"
    # One CPU per worker, as the local cluster's one worker per core: its two stages
    # share it (docs/benchmarks.md, "The pipelined worker").
    assert str(container["resources"]["limits"]["cpu"]) == "1"
    assert cluster["spec"]["scheduler"]["service"]["selector"] == {
        "dask.org/cluster-name": cluster["metadata"]["name"], "dask.org/component": "scheduler"}


def test_k8s_keys_secret_reaches_only_encoders(
    k8s_docs: list[tuple[str, dict[str, Any]]]
) -> None:
    def secrets_of(spec: dict[str, Any]) -> set[str]:
        names = set()
        for c in containers(spec):
            names |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                      if "secretKeyRef" in (e.get("valueFrom") or {})}
        names |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        return names

    holders = {pod for pod, spec, _ in pod_specs(k8s_docs) if "imambig-keys" in secrets_of(spec)}
    assert holders == ENCODERS_K8S
    signers = {pod for pod, spec, _ in pod_specs(k8s_docs)
               if "imambig-signing" in secrets_of(spec)}
    assert signers == {"Deployment/prefect-worker-cpu"}  # the grant flow runs there only


def test_k8s_dask_speaks_tls_only(k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    pods = {pod: spec for pod, spec, _ in pod_specs(k8s_docs)}

    def tls_secret(spec: dict[str, Any]) -> str:
        (container,) = spec["containers"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == TLS_DIR)
        assert mount.get("readOnly") is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        return volume["secret"]["secretName"]

    for role in ("scheduler", "worker"):
        spec = pods[f"DaskCluster/imambig:{role}"]
        args = [str(a) for a in spec["containers"][0]["args"]]
        assert _tls_args(args) == {"--tls-ca-file": f"{TLS_DIR}/ca.pem",
                                   "--tls-cert": f"{TLS_DIR}/cluster.pem"}, role
        assert tls_secret(spec) == "imambig-dask-tls"
    scheduler = [str(a) for a in pods["DaskCluster/imambig:scheduler"]["containers"][0]["args"]]
    assert scheduler[scheduler.index("--protocol") + 1] == "tls"
    worker = [str(a) for a in pods["DaskCluster/imambig:worker"]["containers"][0]["args"]]
    assert worker[2] == "tls://imambig-scheduler:8786"
    client = pods["Deployment/prefect-worker-cpu"]
    env = env_dict(client["containers"][0]["env"])
    assert env["DASK_SCHEDULER_ADDRESS"] == "tls://imambig-scheduler:8786"
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] == f"{TLS_DIR}/client.pem"
    assert tls_secret(client) == "imambig-dask-tls-client"
    # Nothing else mounts a certificate the cluster accepts.
    holders = {pod for pod, spec in pods.items()
               for v in spec.get("volumes", []) if "dask-tls" in (v.get("secret") or {}).get(
                   "secretName", "")}
    assert holders == {"DaskCluster/imambig:scheduler", "DaskCluster/imambig:worker",
                       "Deployment/prefect-worker-cpu"}


def test_k8s_worker_pools(k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    deployments = {d["metadata"]["name"]: d for _, d in k8s_docs if d["kind"] == "Deployment"}
    for pool in ("cpu", "gpu"):
        spec = deployments[f"prefect-worker-{pool}"]["spec"]["template"]["spec"]
        cmd = " ".join(spec["containers"][0]["command"])
        assert f"--pool {pool}" in cmd
        assert "--with-healthcheck" in cmd
    gpu = deployments["prefect-worker-gpu"]["spec"]["template"]["spec"]
    resources = gpu["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"], "the gpu worker must be pinned to GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    cpu = deployments["prefect-worker-cpu"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]


def test_network_policies_select_real_pods(k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    pods = [labels for _, _, labels in pod_specs(k8s_docs)]

    def matches_some_pod(selector: dict[str, Any], where: str) -> None:
        wanted = selector.get("matchLabels", {})
        assert any(wanted.items() <= labels.items() for labels in pods), (
            f"{where}: no pod has labels {wanted}")

    policies = [d for _, d in k8s_docs if d["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies), (
        "expected a default-deny ingress policy")
    for policy in policies:
        name = policy["metadata"]["name"]
        if policy["spec"]["podSelector"]:
            matches_some_pod(policy["spec"]["podSelector"], name)
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    matches_some_pod(peer["podSelector"], f"{name} (from)")


def test_k8s_core_objects_match_schema(k8s_docs: list[tuple[str, dict[str, Any]]]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    container = {
        "type": "object", "required": ["name", "image", "resources"],
        "properties": {"name": {"type": "string"}, "image": {"type": "string"},
                       "args": {"type": "array", "items": {"type": "string"}},
                       "command": {"type": "array", "items": {"type": "string"}},
                       "ports": {"type": "array", "items": {
                           "type": "object", "required": ["containerPort"],
                           "properties": {"containerPort": {"type": "integer"}}}}},
    }
    pod_spec = {"type": "object", "required": ["containers"], "properties": {
        "containers": {"type": "array", "minItems": 1, "items": container},
        "initContainers": {"type": "array", "items": container}}}
    selector = {"type": "object", "required": ["matchLabels"],
                "properties": {"matchLabels": {"type": "object", "minProperties": 1}}}
    workload = {"type": "object", "required": ["spec"], "properties": {"spec": {
        "type": "object", "required": ["selector", "template"],
        "properties": {"selector": selector, "template": {
            "type": "object", "required": ["metadata", "spec"],
            "properties": {"spec": pod_spec}}}}}}
    schemas = {
        ("apps/v1", "Deployment"): workload,
        ("apps/v1", "StatefulSet"): {"allOf": [workload, {"properties": {"spec": {
            "required": ["serviceName", "volumeClaimTemplates"]}}}]},
        ("v1", "Service"): {"type": "object", "required": ["spec"], "properties": {"spec": {
            "type": "object", "required": ["selector", "ports"],
            "properties": {"ports": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["port"]}}}}}},
        ("v1", "ConfigMap"): {"type": "object", "required": ["data"], "properties": {"data": {
            "type": "object", "additionalProperties": {"type": "string"}}}},
        ("v1", "Namespace"): {"type": "object"},
        ("networking.k8s.io/v1", "NetworkPolicy"): {"type": "object", "required": ["spec"],
            "properties": {"spec": {"type": "object", "required": ["podSelector"]}}},
        ("kubernetes.dask.org/v1", "DaskCluster"): {"type": "object", "properties": {"spec": {
            "type": "object", "required": ["worker", "scheduler"], "properties": {
                "worker": {"type": "object", "required": ["replicas", "spec"],
                           "properties": {"spec": pod_spec}},
                "scheduler": {"type": "object", "required": ["spec", "service"],
                              "properties": {"spec": pod_spec}}}}}},
    }
    for file, doc in k8s_docs:
        key = (doc["apiVersion"], doc["kind"])
        assert key in schemas, f"{file}: no schema for {key}; add one"
        jsonschema.validate(doc, schemas[key])


def test_kubectl_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) >= 10
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "imambig", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "imambig"


# ---------------------------------------------------------------------------
# Dockerfile, Prefect deployments, scripts, bucket job
# ---------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r"^ARG TORCH_SPEC=torch==2\.13\.0$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+/whl/cpu$", text, re.M)
    assert '--index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"' in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*", "the context must start from nothing"
    assert "!.venv" not in ignore


def test_prefect_deployments_target_the_pools() -> None:
    config = load_all(INFRA / "prefect" / "prefect.yaml")[0]
    deployments = {d["name"]: d for d in config["deployments"]}
    nightly, train = deployments["nightly-reencode"], deployments["train-gpu"]
    assert nightly["entrypoint"] == "flows/nightly.py:nightly_flow"
    assert deployments["full-reencode"]["parameters"]["overwrite"] is True
    assert "schedules" not in deployments["full-reencode"]
    assert nightly["work_pool"]["name"] == "cpu"
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert nightly["concurrency_limit"] == 1
    assert train["work_pool"]["name"] == "gpu"
    assert train["parameters"]["config"]["device"] == "cuda"
    for d in deployments.values():
        path, _, func = d["entrypoint"].partition(":")
        source = ROOT / path
        assert source.is_file(), f"{d['name']}: {path} does not exist"
        flows = {n.name for n in ast.parse(source.read_text()).body
                 if isinstance(n, ast.FunctionDef)
                 and any("flow" in ast.unparse(dec) for dec in n.decorator_list)}
        assert func in flows, f"{d['name']}: no @flow {func} in {path}"
        for key, value in (d.get("parameters") or {}).items():
            if key == "secrets":  # SecretSources: where secrets are, never their values
                assert all(str(v).startswith(("env:", "file:", "prefect:"))
                           for v in value.values()), f"{d['name']}: {value}"
                continue
            assert not SECRET_NAME.search(key.upper()), f"{d['name']}: secret parameter {key}"
            assert not str(value).startswith(("env:", "file:"))


SHELL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")


def test_local_stack_scripts_use_localhost_only() -> None:
    assert {p.name for p in SHELL_SCRIPTS} >= {"local-stack.sh", "stop-local-stack.sh"}
    start = (SCRIPTS / "local-stack.sh").read_text()
    assert "HOST=127.0.0.1" in start
    for script in SHELL_SCRIPTS:
        assert "0.0.0.0" not in script.read_text(), f"{script.name} binds every interface"
    # Every listener gets --host/--dashboard-address on $HOST.
    assert start.count('--host "$HOST"') >= 3
    assert '--dashboard-address "$HOST:' in start
    assert "prefect server database upgrade -y" in start.replace('"$PREFECT"', "prefect")
    assert f"--nthreads {WORKER_THREADS}" in start


def test_create_buckets_is_idempotent(s3_env: dict[str, str], s3_server: Any) -> None:
    from infra.create_buckets import main

    names = ["infra-test-public", "infra-test-keys"]
    try:
        assert main([*names, "--timeout", "10"]) == 0
        assert main([*names, "--timeout", "10"]) == 0  # a re-run changes nothing
        assert set(names) <= set(s3_server.list_buckets())
    finally:
        for name in names:
            s3_server.delete_bucket(name)
