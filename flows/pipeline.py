"""Flow: the whole job. ingest -> train -> encode -> publish -> grant -> evaluate.

    python -m flows.pipeline --params '{"source": "faces/", "workdir": "runs/w"}'

``--params`` is a JSON object of the flow's parameters; locations may be URL strings,
``config`` a (partial) ``PipelineConfig`` as nested objects, e.g.
``{"config": {"train": {"epochs": 3}, "encode": {"region_items": 64}}}``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.encode import dask_runner, encode_flow
from flows.evaluate import evaluate_flow
from flows.grant import grant_flow
from flows.ingest import ingest_flow
from flows.markdown import markdown_table
from flows.params import check_location, main_with_params
from flows.publish import publish_flow
from flows.train import train_flow
from imambig.access.keystore import assert_separate_roots
from imambig.config import ClusterSecurity, PipelineConfig, SecretSources
from imambig.stores.image_store import open_image_store, store_state
from imambig.stores.location import Location


@flow(name="pipeline", log_prints=True)
def pipeline(
    source: Location,
    workdir: Location,
    public_root: Location | None = None,
    keys_root: Location | None = None,
    publish_root: Location | None = None,
    config: PipelineConfig = PipelineConfig(),
    secrets: SecretSources = SecretSources(),
    grant_to: str | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
    dask_security: ClusterSecurity = ClusterSecurity(),
) -> dict[str, Any]:
    """``workdir`` holds the image store, the model and the reports; the public and key
    roots default to separate folders under it. ``grant_to`` (a user's public key)
    receives a grant of the first ``config.grant_items`` items. ``dask_address``: an
    existing scheduler (tls://, with ``dask_security``'s certificates), else a closed
    local cluster of ``dask_workers`` workers."""
    check_location(workdir, "work folder")
    public_root = public_root or workdir.join("public")
    keys_root = keys_root or workdir.join("keys")
    assert_separate_roots(public_root, keys_root)
    images, model, report = workdir.join("images"), workdir.join("model"), workdir.join("report")

    if store_state(images) == "complete":  # re-runs reuse it (new sources: ingest)
        print(f"reusing the image store at {images}")
        ing = {"images": images.url, "written": open_image_store(images).n_items, "set_aside": 0}
    else:
        ing = ingest_flow(source, images, config.ingest_for_model())
    tr = train_flow(images, model, config.train)
    runner = dask_runner(dask_address, dask_workers, dask_security)
    enc = encode_flow.with_options(task_runner=runner)(
        images, model, public_root, keys_root, config.encode, secrets)
    pub = publish_flow(public_root, publish_root) if publish_root else None
    grant = None
    if grant_to:
        ids = [str(i) for i in open_image_store(images).item_ids()[: config.grant_items]]
        grant = grant_flow(public_root, keys_root, ids, grant_to, workdir.join("grant.bin"),
                           secrets=secrets)
    ev = evaluate_flow(images, model, public_root, keys_root, out=report,
                       config=config.evaluate, secrets=secrets)
    summary = {
        "images": images.url, "written": ing["written"], "set_aside": ing["set_aside"],
        "model": model.url, "model_id": tr["model_id"], "val_psnr": tr["val_psnr"][-1],
        "public_store": enc["public_url"], "keystore": enc["keystore_url"],
        "published": pub["target"] if pub else None, "grant": grant["grant"] if grant else None,
        "owner_key": grant["owner_key"] if grant else None,
        "report": report.url, "rates": ev["rates"],
    }
    lines = markdown_table(("", ""), [(k, v) for k, v in summary.items() if k != "rates"])
    rates = markdown_table(("rate", "value"), [(k, f"{v:.3f}") for k, v in ev["rates"].items()])
    create_markdown_artifact(key="pipeline-summary",
                             markdown=f"# Pipeline run\n\n{lines}\n{rates}")
    return summary


def main() -> None:
    main_with_params(pipeline, __doc__)


if __name__ == "__main__":
    main()
