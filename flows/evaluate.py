"""Flow: quality and privacy metrics of the published stores, as artifacts."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import check_secret_spec, check_storage_options
from imambig.access.secrets import LocalKeyProvider
from imambig.config import KeyConfig
from imambig.stages.evaluate import DEFAULT_ATTACKS, as_table, evaluate_stores
from imambig.stages.share import resolve_store
from imambig.stores.location import join, write_bytes


@task(name="evaluate stores")
def evaluate(images: str, model: str, public: str, keystore: str, keystore_key: str,
             split: str, max_items: int, attacks: list[str], opts: dict[str, Any],
             grid_url: str | None, rd_url: str | None) -> str:
    logger = get_run_logger()
    provider = LocalKeyProvider.from_config(KeyConfig(keystore_key_source=keystore_key))
    ev = evaluate_stores(images, model, public, keystore, provider, opts, split=split,
                         max_items=max_items, attacks=tuple(attacks), log=logger.info,
                         grid_url=grid_url, rd_plot_url=rd_url)
    return ev.to_json()


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    images: str,
    model: str,
    public_root: str,
    keys_root: str,
    out: str | None = None,
    split: str = "test",
    max_items: int = 200,
    attacks: list[str] | None = None,
    keystore_key: str = "env:IMAMBIG_KEYSTORE_KEY",
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from imambig.stages.evaluate import load_evaluation

    opts = check_storage_options(storage_options)
    check_secret_spec(keystore_key, "keystore key")
    public = resolve_store(public_root, opts)
    keystore = resolve_store(keys_root, opts)
    text = evaluate(images, model, public, keystore, keystore_key, split, max_items,
                    list(attacks or DEFAULT_ATTACKS), opts, join(out, "grid.png") if out else None,
                    join(out, "rd.png") if out else None)
    ev = load_evaluation(text)
    create_table_artifact(key="evaluation-metrics", table=as_table(ev),
                          description=f"{ev.n_items} {split} items, model {ev.model_id}")
    create_markdown_artifact(key="evaluation-report", markdown=f"# Evaluation\n\n{ev.markdown()}")
    if out:
        write_bytes(join(out, "evaluation.json"), text.encode(), opts)
    print(ev.markdown())
    return {"rows": as_table(ev), "rates": ev.rates}
