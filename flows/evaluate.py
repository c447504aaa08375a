"""Flow: quality and privacy metrics of the published stores, as artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import check_location
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.secrets import Secrets
from imambig.config import EvaluateConfig, SecretSources
from imambig.stages.versions import resolve_store
from imambig.stores.location import Location
from imambig.study.evaluate import as_table, evaluate_stores, load_evaluation


@task(name="evaluate stores")
def evaluate(images: Location, model: Location, public: Location, keystore: Location,
             config: EvaluateConfig, secrets: SecretSources, out: Location | None) -> str:
    provider = LocalKeyProvider.from_secrets(Secrets(secrets))
    ev = evaluate_stores(images, model, public, keystore, provider, config, out=out,
                         log=get_run_logger().info)
    if out is not None:
        ev.save(out)
    return ev.to_json()


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    images: Location,
    model: Location,
    public_root: Location,
    keys_root: Location,
    out: Location | None = None,
    config: EvaluateConfig = EvaluateConfig(),
    secrets: SecretSources = SecretSources(),
) -> dict[str, Any]:
    for where, what in ((images, "image store"), (model, "model"),
                        (public_root, "public root"), (keys_root, "keys root")):
        check_location(where, what, must_exist=True)
    if out is not None:
        check_location(out, "report folder")
    public, keystore = resolve_store(public_root), resolve_store(keys_root)
    ev = load_evaluation(evaluate(images, model, public, keystore, config, secrets, out))
    create_table_artifact(key="evaluation-metrics", table=as_table(ev),
                          description=f"{ev.n_items} {config.split} items, model {ev.model_id}")
    create_markdown_artifact(key="evaluation-report", markdown=f"# Evaluation\n\n{ev.markdown()}")
    print(ev.markdown())
    return {"rows": as_table(ev), "rates": ev.rates}
