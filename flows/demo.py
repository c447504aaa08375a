"""``imambig demo``: the whole pipeline on embedded defaults.

Draws a set of cartoon faces (shipped as code, see ``demo_images``), starts a local
Prefect server (no server to start by hand; Dask workers need a real one), runs the
``pipeline`` flow with a LocalCluster and local folders, grants a few items to a demo
user and reveals them, then prints where everything is.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from flows.demo_images import write_demo_images

SECRETS_FILE = "owner-secrets.env"


def _owner_secrets(out: Path) -> dict[str, str]:
    """The owner's secrets: from the environment, else generated once and kept (0600)
    in the demo folder so re-runs publish identical bytes."""
    names = ("IMAMBIG_OWNER_SECRET", "IMAMBIG_KEYSTORE_KEY")
    if all(os.environ.get(n) for n in names):
        return {n: os.environ[n] for n in names}
    path = out / SECRETS_FILE
    if path.exists():
        return dict(line.split("=", 1) for line in path.read_text().split())
    values = {n: base64.b64encode(secrets.token_bytes(32)).decode() for n in names}
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in values.items()))
    return values


def run_demo(out: str = "imambig-demo", n_images: int = 400, epochs: int = 30,
             workers: int = 2) -> dict:
    from imambig.access.identity import load_identity, new_identity, save_identity
    from infra.prefect_server import PrefectServer

    t0 = time.perf_counter()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    source = root / "source-images"
    if not source.exists():
        print(f"drawing {n_images} demo faces into {source}")
        write_demo_images(source, n_images)
    env = {**os.environ, **_owner_secrets(root)}
    ident_path = root / "alice.identity"
    if not ident_path.exists():
        save_identity(new_identity(), ident_path)
    alice = load_identity(ident_path)

    params = {
        "source": str(source), "workdir": str(root / "work"), "model_preset": "tiny",
        "epochs": epochs, "batch_size": 32, "split": "random:0.8", "chunk_items": 64,
        "grant_to": alice.public_text(), "grant_items": 4, "eval_items": 64,
        "dask_workers": workers,
    }
    print("starting a local Prefect server ...")
    with PrefectServer(root / "prefect") as server:
        env.update(server.env())
        print(f"Prefect UI while the demo runs: {server.ui_url}")
        proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--params",
                               json.dumps(params)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RuntimeError(f"the pipeline failed:\n{tail}")
        summary = json.loads(proc.stdout[proc.stdout.index("{\n") :])

    from imambig.stages.share import reveal

    grant_path = Path(summary["grant"])
    shown = reveal(grant_path.read_bytes(), alice, summary["model"])
    revealed = root / "revealed"
    revealed.mkdir(exist_ok=True)
    from PIL import Image

    for item, img in zip(shown.item_ids, shown.images, strict=True):
        Image.fromarray(img).resize((128, 128), Image.NEAREST).save(
            revealed / f"{Path(item).stem}.png")
    report = Path(summary["report"])
    print("\n".join([
        "",
        f"done in {time.perf_counter() - t0:.0f} s",
        f"  images        {summary['images']}  ({summary['written']} ingested)",
        f"  model         {summary['model']}  (id {summary['model_id']}, "
        f"validation PSNR {summary['val_psnr']:.2f} dB)",
        f"  public store  {summary['public_store']}",
        f"  keystore      {summary['keystore']}  (secrets: {root / SECRETS_FILE})",
        f"  grant         {grant_path}  -> revealed by alice into {revealed}",
        f"  report        {report / 'evaluation.json'}",
        f"  sample grid   {report / 'grid.png'}",
        f"  RD curves     {report / 'rd.png'}",
        f"  Prefect runs  python -m infra.prefect_server --home {root / 'prefect'}",
    ]))
    return summary
