"""Flow: the whole job. ingest -> train -> encode -> publish -> grant -> evaluate.

    python -m flows.pipeline --help
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.encode import dask_runner, encode_flow
from flows.evaluate import evaluate_flow
from flows.grant import grant_flow
from flows.ingest import ingest_flow
from flows.params import check_storage_options
from flows.publish import publish_flow
from flows.train import train_flow
from imambig.access.keystore import assert_separate_roots
from imambig.config import preset
from imambig.stores.image_store import open_image_store, store_state
from imambig.stores.location import join


@flow(name="pipeline", log_prints=True)
def pipeline(
    source: str,
    workdir: str,
    public_root: str | None = None,
    keys_root: str | None = None,
    publish_root: str | None = None,
    model_preset: str = "tiny",
    epochs: int = 3,
    batch_size: int = 32,
    split: str = "identity:0.8",
    crop: int | None = None,
    limit: int | None = None,
    chunk_items: int = 128,
    grant_to: str | None = None,
    grant_items: int = 4,
    eval_items: int = 100,
    attacks: list[str] | None = None,
    owner_secret: str = "env:IMAMBIG_OWNER_SECRET",
    keystore_key: str = "env:IMAMBIG_KEYSTORE_KEY",
    dask_address: str | None = None,
    dask_workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``workdir`` holds the image store, the model and the reports; the public and key
    roots default to separate folders under it."""
    opts = check_storage_options(storage_options)
    public_root = public_root or join(workdir, "public")
    keys_root = keys_root or join(workdir, "keys")
    assert_separate_roots(public_root, keys_root)
    cfg = preset(model_preset)
    images, model = join(workdir, "images"), join(workdir, "model")

    if store_state(images, opts) == "complete":  # re-runs reuse it (new sources: ingest)
        print(f"reusing the image store at {images}")
        n = open_image_store(images, opts).n_items
        ing = {"images": images, "written": n, "set_aside": 0}
    else:
        ing = ingest_flow(source, images, split=split, height=cfg.image_height,
                          width=cfg.image_width, crop=crop, limit=limit, storage_options=opts)
    tr = train_flow(images, model, model_preset=model_preset, epochs=epochs,
                    batch_size=batch_size, storage_options=opts)
    runner = dask_runner(dask_address, dask_workers)
    enc = encode_flow.with_options(task_runner=runner)(
        images, model, public_root, keys_root, chunk_items=chunk_items,
        owner_secret=owner_secret, keystore_key=keystore_key, storage_options=opts)
    pub = publish_flow(public_root, publish_root, opts) if publish_root else None
    grant = None
    if grant_to:
        from imambig.stores.public_store import PublicStore

        ids = [str(i) for i in PublicStore.open(enc["public_url"], opts).item_ids()[:grant_items]]
        grant = grant_flow(public_root, keys_root, ids, grant_to, join(workdir, "grant.bin"),
                           keystore_key=keystore_key, storage_options=opts)
    ev = evaluate_flow(images, model, public_root, keys_root, out=join(workdir, "report"),
                       max_items=eval_items, attacks=attacks, keystore_key=keystore_key,
                       storage_options=opts)
    summary = {
        "images": images, "written": ing["written"], "set_aside": ing["set_aside"],
        "model": model, "model_id": tr["model_id"], "val_psnr": tr["val_psnr"][-1],
        "public_store": enc["public_url"], "keystore": enc["keystore_url"],
        "published": pub["target"] if pub else None, "grant": grant["grant"] if grant else None,
        "report": join(workdir, "report"), "rates": ev["rates"],
    }
    lines = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if k != "rates")
    rates = "\n".join(f"| {k} | {v:.3f} |" for k, v in ev["rates"].items())
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=f"# Pipeline run\n\n| | |\n|---|---|\n{lines}\n\n| rate | value |\n|---|---|\n"
                 f"{rates}\n",
    )
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", required=True, help="JSON object of pipeline parameters")
    a = p.parse_args()
    print(json.dumps(pipeline(**json.loads(a.params)), indent=1))


if __name__ == "__main__":
    main()
