"""``imambig demo``: the whole pipeline on embedded defaults.

Draws a set of cartoon faces (shipped as code, see ``demo_images``), starts a local
Prefect server (no server to start by hand; Dask workers need a real one), runs the
``pipeline`` flow with a LocalCluster and local folders (training fine-tunes the
shipped demo weights, ``flows/assets``, for a few epochs), grants a few items to a demo
user and reveals them, then prints where everything is. ``imambig demo`` comes from here
through the ``imambig.commands`` entry point (``add_command``).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flows.demo_weights import DEMO_PRESET, DEMO_WEIGHTS
from imambig.config import (
    DEFAULT_ATTACKS,
    KEYSTORE_KEY_ENV,
    OWNER_SECRET_ENV,
    PRESETS,
    SIGNING_KEY_ENV,
    EncodeConfig,
    EvaluateConfig,
    IngestConfig,
    PipelineConfig,
    TrainConfig,
)

SECRETS_FILE = "owner-secrets.env"


def _owner_secrets(out: Path) -> dict[str, str]:
    """The owner's secrets: from the environment, else generated once and kept (0600)
    in the demo folder so re-runs publish identical bytes (a secret the file lacks, as
    from an earlier version, is added to it)."""
    names = (OWNER_SECRET_ENV, KEYSTORE_KEY_ENV, SIGNING_KEY_ENV)
    if all(os.environ.get(n) for n in names):
        return {n: os.environ[n] for n in names}
    path = out / SECRETS_FILE
    kept = dict(line.split("=", 1) for line in path.read_text().split()) if path.exists() else {}
    values = {n: kept.get(n) or base64.b64encode(secrets.token_bytes(32)).decode()
              for n in names}
    if values != kept:
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{SECRETS_FILE}.")
        with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
            f.write("".join(f"{k}={v}\n" for k, v in values.items()))
        os.replace(tmp, path)
    return values


def add_command(sub: argparse._SubParsersAction) -> None:
    """``imambig demo``."""
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on built-in demo images (no setup needed)",
        description="Draws cartoon faces, starts a local Prefect server, runs the pipeline "
                    "flow (ingest, fine-tune the shipped demo weights, encode on a local "
                    "Dask cluster, grant, evaluate) "
                    "into local folders, reveals the granted images as a demo user, prints "
                    "the authorized image's PSNR against the public record and every "
                    "attacker, and where the stores, keys, report and sample grid are.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="imambig-demo", help="folder for everything the demo makes")
    p.add_argument("--images", type=int, default=400, help="demo images to draw")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs of the {DEMO_PRESET} model; unset (%(default)s): "
                        f"{FINE_TUNE_EPOCHS} fine-tuning the shipped demo weights, "
                        f"{SCRATCH_EPOCHS} with --scratch")
    p.add_argument("--scratch", action="store_true",
                   help="train from a random start instead of the shipped demo weights "
                        "(flows/assets, made by: python -m flows.demo_weights)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    p.set_defaults(handler=_run)


def _run(a: argparse.Namespace) -> int:
    epochs = a.epochs if a.epochs is not None else (SCRATCH_EPOCHS if a.scratch else
                                                     FINE_TUNE_EPOCHS)
    run_demo(a.out, a.images, epochs, a.workers, scratch=a.scratch)
    return 0


FINE_TUNE_EPOCHS = 2
SCRATCH_EPOCHS = 60
# The suite without the two least-squares attacks: they solve a problem per item and took
# about 3 of the demo's 5 minutes here; with n >= k they do no better than re-encoding
# (docs/privacy.md, Measured privacy). The printed table names what was left out.
DEMO_ATTACKS = tuple(a for a in DEFAULT_ATTACKS if not a.startswith("least_squares"))


def demo_config(epochs: int = FINE_TUNE_EPOCHS, scratch: bool = False) -> PipelineConfig:
    """The demo's choices: the ``small`` model on 64x64 faces (the paper's code sizes:
    n = 256 >= k = 128, k' = 2k), fine-tuned from the shipped weights (a lower learning
    rate: they are already trained) or trained from scratch; small regions and reports."""
    start = ({"init": None, "lr": 2e-3} if scratch
             else {"init": str(DEMO_WEIGHTS), "lr": 5e-4})
    return PipelineConfig(
        ingest=IngestConfig(split="random:0.8"),
        train=TrainConfig(model=PRESETS[DEMO_PRESET], epochs=epochs, batch_size=32, loss="mse",
                          ema=0.99, minutes=None, **start),
        encode=EncodeConfig(region_items=64),
        evaluate=EvaluateConfig(max_items=64, attacks=DEMO_ATTACKS, grantee_attacks=False),
        grant_items=4,
    )


def run_demo(out: str = "imambig-demo", n_images: int = 400,
             epochs: int = FINE_TUNE_EPOCHS, workers: int = 2, scratch: bool = False
             ) -> dict[str, Any]:
    from imambig.access.identity import load_identity, new_identity, save_identity
    from imambig.stores.location import Location
    from infra.prefect_server import PrefectServer

    t0 = time.perf_counter()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    source = root / "source-images"
    if not source.exists():
        print(f"drawing {n_images} demo faces into {source}")
        from flows.demo_images import write_demo_images

        write_demo_images(source, n_images)
    env = {**os.environ, **_owner_secrets(root)}
    ident_path = root / "alice.identity"
    if not ident_path.exists():
        save_identity(new_identity(), ident_path)
    alice = load_identity(ident_path)

    params = {
        "source": str(source), "workdir": str(root / "work"),
        "config": dataclasses.asdict(demo_config(epochs, scratch)),
        "grant_to": alice.public_text(), "dask_workers": workers,
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

    from imambig.stages.share import reveal, write_revealed

    grant_path = Path(summary["grant"])
    # alice checks the grant against the owner key she was given (printed below)
    shown = reveal(grant_path.read_bytes(), alice, summary["owner_key"],
                   Location(summary["model"]))
    revealed = root / "revealed"
    write_revealed(revealed, shown, scale=2)
    report = Path(summary["report"])
    from imambig.study.evaluate import contrast_table

    print("\nMeasured on the test split (the grid's columns and every attack):\n")
    print(contrast_table(json.loads((report / "evaluation.json").read_text())))
    print("\n".join([
        "",
        f"done in {time.perf_counter() - t0:.0f} s",
        f"  images        {summary['images']}  ({summary['written']} ingested)",
        f"  model         {summary['model']}  (id {summary['model_id']}, "
        f"validation PSNR {summary['val_psnr']:.2f} dB)",
        f"  public store  {summary['public_store']}",
        f"  keystore      {summary['keystore']}  (secrets: {root / SECRETS_FILE})",
        f"  grant         {grant_path}  -> revealed by alice into {revealed}",
        f"  owner key     {summary['owner_key']}  (users pin it: imambig reveal --owner)",
        f"  report        {report / 'evaluation.json'}",
        f"  sample grid   {report / 'grid.png'}",
        f"  RD curves     {report / 'rd.png'}",
        f"  Prefect runs  python -m infra.prefect_server --home {root / 'prefect'}",
    ]))
    return summary
