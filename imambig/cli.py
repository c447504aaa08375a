"""The ``imambig`` command line: flags -> locations and configs -> stages and study.

Each command's flags become its stage's config in one place (the *flags -> configs*
section below), and every default a flag shows comes from ``imambig.config``. Options
that several commands share (storage options, secret sources) are argparse parent
parsers, declared once. Commands of the orchestration layer (``demo``, ``serve``) are
plugged in through the ``imambig.commands`` entry-point group, so this library never
imports the layer above it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from imambig.config import (
    ALL_ATTACKS,
    DEFAULT_PRESET,
    PRECISIONS,
    PRESETS,
    SECOND_RELEASES,
    AttackConfig,
    ClusterSecurity,
    EncodeConfig,
    EvaluateConfig,
    GrantDecoderConfig,
    IngestConfig,
    SecretSources,
    TrainConfig,
    preset,
)
from imambig.errors import StorageUnavailableError
from imambig.stores.location import Location

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # what a command plug-in adds its parser to
COMMANDS_GROUP = "imambig.commands"

EPILOG = """\
typical session:
  imambig ingest ../data/celeba --split identity:0.8 --out runs/images
  imambig train --images runs/images --out runs/model     (small, MSE, 24-minute budget)
  imambig encode --images runs/images --model runs/model --public runs/public --keys runs/keys
  imambig keys new-owner --out owner-signing.key    (the owner, once; prints OWNERKEY)
  imambig keys new-identity --out alice.id          (the user; prints a public key)
  imambig grant --public runs/public --keys runs/keys --items 000002.jpg --to PUBKEY \
      --signing-key file:owner-signing.key --out g.bin
  imambig reveal --grant g.bin --identity alice.id --owner OWNERKEY --model runs/model \
      --out revealed/
  imambig evaluate --images runs/images --model runs/model --public runs/public \\
      --keys runs/keys --out runs/eval      (Table 1, codecs at matched bytes, plots)
  imambig attack --model runs/model --images runs/images     (attacks across k')
  imambig --help-all          every sub-command's options
"""


# ---------------------------------------------------------------------------
# Shared options: parent parsers
# ---------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


STORAGE = argparse.ArgumentParser(add_help=False)
STORAGE.add_argument("--storage-options", type=_json_object, default={},
                     help="JSON dict of fsspec options for every location of the command")

_SECRETS = SecretSources()
OWNER_SECRET = argparse.ArgumentParser(add_help=False)
OWNER_SECRET.add_argument("--owner-secret", default=_SECRETS.owner_secret,
                          help="owner secret source (env:NAME | file:PATH)")
KEYSTORE_KEY = argparse.ArgumentParser(add_help=False)
KEYSTORE_KEY.add_argument("--keystore-key", default=_SECRETS.keystore_key,
                          help="keystore key source (env:NAME | file:PATH)")
SIGNING_KEY = argparse.ArgumentParser(add_help=False)
SIGNING_KEY.add_argument("--signing-key", default=_SECRETS.signing_key,
                         help="owner signing key source (env:NAME | file:PATH); make one "
                              "with `imambig keys new-owner`")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


# ---------------------------------------------------------------------------
# Flags -> locations and configs (the one place where flags become values)
# ---------------------------------------------------------------------------


def location(a: argparse.Namespace, url: str) -> Location:
    return Location(url, a.storage_options)


def secret_sources(a: argparse.Namespace) -> SecretSources:
    return SecretSources(owner_secret=getattr(a, "owner_secret", _SECRETS.owner_secret),
                         keystore_key=getattr(a, "keystore_key", _SECRETS.keystore_key),
                         signing_key=getattr(a, "signing_key", _SECRETS.signing_key))


def cluster_security(a: argparse.Namespace) -> ClusterSecurity:
    return ClusterSecurity(tls_ca_file=a.dask_tls_ca, tls_cert_file=a.dask_tls_cert,
                           tls_key_file=a.dask_tls_key, allow_plain_tcp=a.dask_allow_plain_tcp)


def ingest_config(a: argparse.Namespace, base: IngestConfig | None = None) -> IngestConfig:
    """Flags over ``base`` (an existing store's settings, which an append keeps) or the
    defaults."""
    d = base or IngestConfig()
    height, width = d.height, d.width
    if a.size is not None:
        height = a.size[0]
        width = a.size[1] if len(a.size) > 1 else height

    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    return IngestConfig(height=height, width=width, crop=given(a.crop, d.crop),
                        split=given(a.split, d.split), seed=given(a.seed, d.seed),
                        chunk_items=given(a.chunk_items, d.chunk_items), workers=a.workers,
                        limit=a.limit)


def train_config(a: argparse.Namespace) -> TrainConfig:
    model = preset(a.preset)
    if a.k is not None:
        model = dataclasses.replace(model, k=a.k)
    if a.slope is not None:
        model = dataclasses.replace(model, negative_slope=a.slope)
    return TrainConfig(
        model=model, epochs=a.epochs, minutes=a.minutes, batch_size=a.batch_size, lr=a.lr,
        warmup=a.warmup, loss=a.loss, flip=a.flip, ema=a.ema,
        calibration_items=a.calibration_items, precision=a.precision,
        seed=a.seed, max_items=a.max_items, val_items=a.val_items,
        checkpoint_every=a.checkpoint_every, device=a.device, num_threads=a.threads,
    )


def encode_config(a: argparse.Namespace) -> EncodeConfig:
    return EncodeConfig(k_public=a.k_public, region_items=a.region_items,
                        precision=a.precision, device=a.device)


def evaluate_config(a: argparse.Namespace) -> EvaluateConfig:
    return EvaluateConfig(split=a.split, max_items=a.max_items, attacks=a.attacks,
                          codecs=a.codecs, rd_items=a.rd_items, attacker_items=a.attacker_items,
                          releases=a.releases, identity=a.identity, linkage=a.linkage,
                          grant_fractions=tuple(float(x) for x in a.grants),
                          grantee_attacks=a.grantee_attacks)


def attack_config(a: argparse.Namespace) -> AttackConfig:
    second = () if a.second_release == ("none",) else a.second_release
    return AttackConfig(attacks=a.attacks, k_publics=tuple(int(x) for x in a.k_public),
                        fit_items=a.fit, own_items=a.own, releases=a.releases,
                        inversion_epochs=a.inversion_epochs, target_items=a.targets,
                        k_lows=tuple(int(x) for x in a.k_low),
                        key_holder_items=a.key_holder_items,
                        second_releases=second, pair_items=a.pairs,
                        second_model=a.second_model, identity=a.identity,
                        gallery_per_identity=a.gallery, linkage=a.linkage,
                        precision=a.precision, seed=a.seed)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------


def _add_ingest(sub: Subparsers) -> None:
    d = IngestConfig()
    p = sub.add_parser(
        "ingest", parents=[STORAGE],
        help="turn a folder / CelebA download / fsspec URL of images into a Zarr image store",
        description=(
            "Read every image under SOURCE (a CelebA download with img_align_celeba/, "
            "list_eval_partition.txt and identity_CelebA.txt; any folder of images; or an "
            "fsspec URL such as s3://bucket/prefix), centre-crop and resize it, assign a "
            "train/val/test split and write a chunked uint8 Zarr store at --out. Files that "
            "cannot be used are set aside with a reason in <out>/ingest_report.json; the run "
            "goes on. Into an existing store it appends: sources it does not hold by name are "
            "added at the end (existing items never move), a known name whose file changed "
            "or a copy of a held file is reported, not added; the store's size, crop, split "
            "and seed are kept. Run it again after adding files, e.g. nightly."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", help="folder, CelebA root, or fsspec URL of images")
    p.add_argument("--out", required=True, help="URL or path of the image store to write")
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                   help=f"output HEIGHT [WIDTH] in pixels (default: {d.height}, or the "
                        "existing store's)")
    p.add_argument("--crop", type=int, default=None,
                   help="centre square crop before resizing (default: 178 for CelebA, "
                        "else the largest centred crop of the output aspect ratio)")
    p.add_argument("--split", default=None,
                   help="official | random:<train fraction> | identity:<train fraction>; "
                        f"the remainder is split evenly into val and test (default: {d.split}, "
                        "or the existing store's)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of random/identity splits (default: {d.seed}, or the store's)")
    p.add_argument("--limit", type=int, default=d.limit,
                   help="ingest only the first N sources (sorted by name)")
    p.add_argument("--chunk-items", type=int, default=None,
                   help=f"images per Zarr chunk of a new store (default: {d.chunk_items})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="decode processes (0: one per core)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store instead of appending to it")
    p.set_defaults(handler=_run_ingest)


def _run_ingest(a: argparse.Namespace) -> int:
    from imambig.stages.ingest import ingest, stored_settings

    out = location(a, a.out)
    base = None if a.overwrite else stored_settings(out)
    report = ingest(location(a, a.source), out, ingest_config(a, base), overwrite=a.overwrite)
    print(report.summary())
    return 0


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


def _add_train(sub: Subparsers) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train", parents=[STORAGE],
        help="train the sparse autoencoder on an image store's training split",
        description=(
            "Train on the 'train' split of --images, validate (PSNR) on 'val' after every "
            "epoch, and write checkpoints to --out (any fsspec URL). Re-running the same "
            "command resumes from the last checkpoint in --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--images", required=True, help="image store written by `imambig ingest`")
    p.add_argument("--out", required=True, help="checkpoint folder URL")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help="model preset; the store's image size must match it")
    p.add_argument("--k", type=int, default=None, help="override the preset's top-k")
    p.add_argument("--slope", type=float, default=None,
                   help="override the preset's leaky-ReLU negative slope")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="epochs (an upper bound when --minutes is given)")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help="time budget: stop after this many minutes of optimizer steps "
                        "(validation and checkpoints come on top; the model records both), "
                        "with the learning-rate schedule following that time")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help="fraction of the run spent warming the learning rate up")
    p.add_argument("--loss", choices=["bce", "mse"], default=d.loss)
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="no random horizontal flips")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="decay of the published weight average (e.g. 0.999; 0: none)")
    p.add_argument("--calibration-items", type=int, default=d.calibration_items,
                   help="training images on which the weight average's BatchNorm "
                        "statistics are measured before it is validated and published")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help="bf16 autocast (CPUs with AVX-512 BF16/AMX, recent GPUs) or fp32; "
                        "auto picks bf16 where the hardware has it")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-items", type=int, default=d.max_items,
                   help="use at most this many training images")
    p.add_argument("--val-items", type=int, default=d.val_items)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="optimizer steps between mid-epoch checkpoints")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=d.num_threads,
                   help="torch CPU threads (0: torch default)")
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> int:
    from imambig.stages.train import train

    result = train(location(a, a.images), location(a, a.out), train_config(a))
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------


def _add_encode(sub: Subparsers) -> None:
    d = EncodeConfig()
    p = sub.add_parser(
        "encode", parents=[STORAGE, OWNER_SECRET, KEYSTORE_KEY],
        help="encode an image store into a public store + keystore, in parallel on Dask",
        description=(
            "Encode every image of --images with the model at --model, ambiguate the codes "
            "and write them to a versioned public store under --public; the keys go to a "
            "versioned, encrypted keystore under --keys (a different root). Re-running "
            "resumes an interrupted run and encodes only images added since. Secrets come "
            "from the environment: IMAMBIG_OWNER_SECRET (seeds the noise) and "
            "IMAMBIG_KEYSTORE_KEY (encrypts the keystore), base64 of >= 32 bytes, or "
            "--owner-secret / --keystore-key sources such as file:/run/secrets/owner."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--images", required=True, help="image store URL")
    p.add_argument("--model", required=True, help="model folder URL (from `imambig train`)")
    p.add_argument("--public", required=True, help="public root URL (publishable)")
    p.add_argument("--keys", required=True, help="keystore root URL (private)")
    p.add_argument("--k-public", type=int, default=d.k_public,
                   help="public non-zeros per map, k' (default: 2k)")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help="the encoder's arithmetic: bf16 where the hardware has it (auto), or "
                        "fp32. Records depend on it, and a model's codes are published at "
                        "one precision only")
    p.add_argument("--region-items", "--chunk-items", dest="region_items", type=int,
                   default=d.region_items,
                   help="items per region: one public-store chunk, one keystore row, one task")
    p.add_argument("--device", default=d.device,
                   help="where workers run the encoder and the mechanism: cpu, or cuda / "
                        "cuda:N (each batch stays on the GPU; use --workers 1 per GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="LocalCluster worker processes (default: one per core)")
    c = ClusterSecurity()
    p.add_argument("--dask-address", "--scheduler", dest="dask_address", default=None,
                   help="use an existing Dask scheduler, e.g. tls://scheduler:8786, reached "
                        "with the cluster's certificates (below). The cluster must be trusted: "
                        "Dask runs what it is sent, and the encode sends it keys. Default: a "
                        "local cluster that only this process can reach")
    p.add_argument("--dask-tls-ca", default=c.tls_ca_file,
                   help="CA certificate (PEM) of the scheduler's cluster (default: Dask config "
                        "distributed.comm.tls.ca-file)")
    p.add_argument("--dask-tls-cert", default=c.tls_cert_file,
                   help="this client's certificate (PEM), signed by that CA")
    p.add_argument("--dask-tls-key", default=c.tls_key_file,
                   help="this client's private key (PEM)")
    p.add_argument("--dask-allow-plain-tcp", action="store_true", default=c.allow_plain_tcp,
                   help="INSECURE: accept a tcp:// scheduler, without TLS or authentication; "
                        "anyone who can reach it runs code on its workers and reads the keys")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild a store version built with other settings")
    p.set_defaults(handler=_run_encode)


def _run_encode(a: argparse.Namespace) -> int:
    from imambig.stages.encode.dask_regions import DaskRegions
    from imambig.stages.encode.driver import run_encode
    from imambig.stages.encode.plan import EncodeJob

    job = EncodeJob(images=location(a, a.images), model=location(a, a.model),
                    public_root=location(a, a.public), keys_root=location(a, a.keys),
                    config=encode_config(a), secrets=secret_sources(a))
    regions = DaskRegions(a.dask_address, a.workers, cluster_security(a))
    report = run_encode(job, regions, overwrite=a.overwrite)
    print(report.summary())
    return 0


# ---------------------------------------------------------------------------
# convert-model
# ---------------------------------------------------------------------------


def _add_convert_model(sub: Subparsers) -> None:
    p = sub.add_parser(
        "convert-model", parents=[STORAGE],
        help="rewrite your own pickled model.pt / state.pt as safetensors (same model id)",
        description="Earlier versions wrote pickles, which can run code when loaded; they "
                    "are refused now. This converts the files in a model folder you made "
                    "yourself (with torch's restricted loader) and removes the pickles.",
    )
    p.add_argument("--model", required=True, help="model folder URL")
    p.set_defaults(handler=_run_convert_model)


def _run_convert_model(a: argparse.Namespace) -> int:
    from imambig.model.checkpoint import convert_legacy

    written = convert_legacy(location(a, a.model))
    if not written:
        raise FileNotFoundError(f"no model.pt or state.pt in {a.model}")
    print(f"wrote {', '.join(written)} in {a.model}")
    return 0


# ---------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------


def _add_validate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "validate", parents=[STORAGE],
        help="check a store against its versioned layout; lists every violation",
        description="Exit status 0 when every store is valid, 1 otherwise.",
    )
    p.add_argument("urls", nargs="+", help="store URLs (image, public or keystore)")
    p.set_defaults(handler=_run_validate)


def _run_validate(a: argparse.Namespace) -> int:
    from storage_schemas.validate import validate

    ok = True
    for url in a.urls:
        report = validate(location(a, url))
        print(report.summary())
        ok &= report.ok
    return 0 if ok else 1


# ---------------------------------------------------------------------------
# versions / prune
# ---------------------------------------------------------------------------


def _add_versions(sub: Subparsers) -> None:
    p = sub.add_parser(
        "versions", parents=[STORAGE],
        help="list the store versions under a public root and a key root",
        description="One line per version (model id, k', encoder precision, items, since "
                    "when, which stores exist, current / complete / incomplete / leased). "
                    "A new model id (retraining, rotating the owner secret) starts a new "
                    "version beside the old ones; `imambig prune` removes old ones.",
    )
    p.add_argument("--public", required=True, help="public store root")
    p.add_argument("--keys", required=True, help="keystore root")
    p.set_defaults(handler=_run_versions)


def _run_versions(a: argparse.Namespace) -> int:
    from imambig.stages.versions import HEADER, list_versions

    found = list_versions(location(a, a.public), location(a, a.keys))
    print(HEADER)
    for v in found:
        print(v.row())
    if not found:
        print("(no versions)")
    return 0


def _add_prune(sub: Subparsers) -> None:
    p = sub.add_parser(
        "prune", parents=[STORAGE],
        help="delete old store versions (public store and keystore together)",
        description="Deletes every version but the current one that stopped being current "
                    "(or was last written) more than --grace-days ago, both its public store "
                    "and its keystore; a version an encode run holds the lease of is kept. "
                    "Grants of a deleted version stop working: keep the grace period longer "
                    "than your grants' validity, or re-grant from the current version.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--public", required=True, help="public store root")
    p.add_argument("--keys", required=True, help="keystore root")
    p.add_argument("--grace-days", type=float, default=7.0,
                   help="keep versions superseded less than this many days ago")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(handler=_run_prune)


def _run_prune(a: argparse.Namespace) -> int:
    from imambig.stages.versions import prune

    gone = prune(location(a, a.public), location(a, a.keys), grace_days=a.grace_days,
                 dry_run=a.dry_run)
    print(f"{'would delete' if a.dry_run else 'deleted'} {len(gone)} versions")
    return 0


def _item_list(a: argparse.Namespace, none: str) -> list[str]:
    """Items named on the command line and in ``--items-file`` (one a line)."""
    items = list(a.items)
    if a.items_file:
        items += [ln.strip() for ln in Path(a.items_file).read_text().splitlines() if ln.strip()]
    if not items:
        raise ValueError(none)
    return items


def _add_forget(sub: Subparsers) -> None:
    p = sub.add_parser(
        "forget", parents=[STORAGE, KEYSTORE_KEY],
        help="remove items for good: their keys, public records and images",
        description="For each item (its name in the image store): its key is destroyed in "
                    "every keystore version (the slot becomes a tombstone, the row "
                    "re-sealed), its public record overwritten with an empty one in every "
                    "public store version, its image zeroed and its name replaced in the "
                    "image store. Later encodes and appends never bring it back; grants "
                    "already issued are refused at reveal. Each version is changed under "
                    "its encode lease. Names not found are reported; the rest go on.",
    )
    p.add_argument("items", nargs="*", help="item names to forget")
    p.add_argument("--items-file", default=None, help="file with one item name per line")
    p.add_argument("--images", required=True, help="image store")
    p.add_argument("--public", required=True, help="public store root")
    p.add_argument("--keys", required=True, help="keystore root")
    p.set_defaults(handler=_run_forget)


def _run_forget(a: argparse.Namespace) -> int:
    from imambig.access.key_provider import LocalKeyProvider
    from imambig.access.secrets import Secrets
    from imambig.stages.forget import forget

    items = _item_list(a, "no items to forget: name them, or pass --items-file")
    report = forget(items, location(a, a.images), location(a, a.public), location(a, a.keys),
                    LocalKeyProvider.from_secrets(Secrets(secret_sources(a))), log=print)
    print(report.summary())
    return 0 if not report.problems else 1


# ---------------------------------------------------------------------------
# keys / grant / reveal
# ---------------------------------------------------------------------------


def _add_keys(sub: Subparsers) -> None:
    p = sub.add_parser("keys", help="identities of data users; the owner's signing key")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    n = ksub.add_parser(
        "new-identity",
        help="create an X25519 identity; prints the public key to hand to the owner",
        description="Writes the private identity to --out (mode 0600) and prints the "
                    "public key (imambig-pub-v1:...) that grants are sealed to.",
    )
    n.add_argument("--out", required=True, help="file for the private identity")
    n.add_argument("--force", action="store_true", help="replace an existing file")
    n.set_defaults(handler=_run_new_identity)
    o = ksub.add_parser(
        "new-owner",
        help="create the owner's grant-signing key; prints the public key users pin",
        description="Writes a fresh signing secret to --out (mode 0600, never replaced) and "
                    "prints its public key (imambig-owner-v1:...). Point --signing-key (or "
                    "IMAMBIG_SIGNING_KEY, or a Prefect block) at the secret, and give users "
                    "the public key: `imambig reveal --owner` accepts only grants it signed.",
    )
    o.add_argument("--out", required=True, help="file for the signing secret")
    o.set_defaults(handler=_run_new_owner)
    q = ksub.add_parser("owner-public", parents=[SIGNING_KEY],
                        help="print the public key of the owner's signing key")
    q.set_defaults(handler=_run_owner_public)


def _run_new_identity(a: argparse.Namespace) -> int:
    from imambig.access.identity import new_identity, save_identity

    ident = new_identity()
    save_identity(ident, a.out, overwrite=a.force)
    print(ident.public_text())
    return 0


def _run_new_owner(a: argparse.Namespace) -> int:
    import os

    from imambig.access.owner_key import public_text, signing_key
    from imambig.access.secrets import from_file, generate_secret_text

    try:
        fd = os.open(a.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{a.out} exists; a signing key is never replaced") from None
    with os.fdopen(fd, "w") as f:
        f.write(generate_secret_text() + "\n")
    print(public_text(signing_key(from_file(a.out))))
    return 0


def _run_owner_public(a: argparse.Namespace) -> int:
    from imambig.access.owner_key import public_text, signing_key
    from imambig.access.secrets import Secrets

    print(public_text(signing_key(Secrets(secret_sources(a)).signing_key)))
    return 0


def _add_grant(sub: Subparsers) -> None:
    p = sub.add_parser(
        "grant", parents=[STORAGE, KEYSTORE_KEY, SIGNING_KEY],
        help="sign and seal the keys of chosen items to a user's public key",
        description="Reads the keys of the chosen items from the keystore, checks that the "
                    "public store still holds the records they were encoded with, signs "
                    "them with the owner's signing key and seals them to the recipient. The "
                    "grant file reveals nothing to anyone else.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--public", required=True, help="public store URL or root")
    p.add_argument("--keys", required=True, help="keystore URL or root")
    p.add_argument("--to", required=True, help="recipient public key (imambig-pub-v1:...)")
    p.add_argument("--items", nargs="*", default=[], help="item ids to grant")
    p.add_argument("--items-file", default=None, help="file with one item id per line")
    p.add_argument("--k-low", type=int, default=None,
                   help="lower fidelity: the grant holds k_low of each map's real entries "
                        "themselves (a secret random choice, fixed per record) and nothing "
                        "that opens the public record")
    p.add_argument("--model", default=None,
                   help="with --k-low: the model folder, whose grant decoder (`imambig "
                        "train-grant-decoder`) the grant names for revealing it")
    p.add_argument("--valid-days", type=float, default=30.0,
                   help="days until the grant expires")
    p.add_argument("--out", required=True, help="grant file to write")
    p.set_defaults(handler=_run_grant)


def _run_grant(a: argparse.Namespace) -> int:
    from imambig.access.key_provider import LocalKeyProvider
    from imambig.access.owner_key import signing_key
    from imambig.access.secrets import Secrets
    from imambig.stages.share import issue_grant

    items = _item_list(a, "no items to grant: pass --items or --items-file")
    secrets = Secrets(secret_sources(a))
    blob = issue_grant(location(a, a.public), location(a, a.keys), items, a.to,
                       LocalKeyProvider.from_secrets(secrets), signing_key(secrets.signing_key),
                       k_low=a.k_low, valid_days=a.valid_days,
                       model=None if a.model is None else location(a, a.model),
                       log=lambda m: print(m, file=sys.stderr))
    Path(a.out).write_bytes(blob)
    print(f"granted {len(items)} items: {a.out} ({len(blob)} bytes)")
    return 0


def _add_grant_decoder(sub: Subparsers) -> None:
    d = GrantDecoderConfig()
    p = sub.add_parser(
        "train-grant-decoder", parents=[STORAGE],
        help="train the decoder that lower-fidelity grants are revealed with",
        description="Fine-tunes a copy of the model's decoder on the training split's codes "
                    "cut to a random k_low of their k entries per map, and publishes it in "
                    "<model>/grant-decoder/; with --k-low, also one for each of those "
                    "fidelities (fine-tuned from the general one, in "
                    "<model>/grant-decoder/k_low-<n>/). `imambig grant --k-low --model` "
                    "names the best one for the grant's fidelity, so a grantee sees what its "
                    "grant holds, not less than it could get by training its own.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (from `imambig train`)")
    p.add_argument("--images", required=True, help="image store with train and val splits")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="epochs (an upper bound when --minutes is given)")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help="time budget in minutes of optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-fraction", type=float, default=d.min_fraction,
                   help="smallest k_low/k the general decoder is trained for")
    p.add_argument("--k-low", type=_comma_list, default=(), metavar="K,K,...",
                   help="comma-separated fidelities to train a decoder of their own for, "
                        "e.g. 32,64,96 (the fidelities you grant; the general one is "
                        "trained first where missing)")
    p.add_argument("--max-items", type=int, default=d.max_items)
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.num_threads,
                   help="torch CPU threads (0: torch default)")
    p.set_defaults(handler=_run_grant_decoder)


def _run_grant_decoder(a: argparse.Namespace) -> int:
    from imambig.stages.grant_decoder import train_grant_decoder

    config = GrantDecoderConfig(epochs=a.epochs, minutes=a.minutes, batch_size=a.batch_size,
                                lr=a.lr, min_fraction=a.min_fraction, max_items=a.max_items,
                                precision=a.precision, seed=a.seed, num_threads=a.threads)
    for k_low in [int(x) for x in a.k_low] or [None]:
        result = train_grant_decoder(location(a, a.model), location(a, a.images),
                                     dataclasses.replace(config, k_low=k_low), log=print)
        print(f"grant decoder {result['model_id']} written to {result['where']}")
    return 0


def _add_reveal(sub: Subparsers) -> None:
    p = sub.add_parser(
        "reveal", parents=[STORAGE],
        help="reconstruct granted images from the public store, a grant and the model",
        description="Opens the grant with your identity, accepts it only if the owner key "
                    "you pinned signed it, checks the model file and every public record "
                    "against the grant, and writes one PNG per item.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--grant", required=True, help="grant file")
    p.add_argument("--identity", required=True, help="your private identity file")
    p.add_argument("--owner", required=True,
                   help="the owner's public key (imambig-owner-v1:...) or a file holding it")
    p.add_argument("--model", required=True, help="published model URL")
    p.add_argument("--public", default=None,
                   help="public store URL, if not the one recorded in the grant")
    p.add_argument("--out", required=True, help="folder for the PNG images")
    p.set_defaults(handler=_run_reveal)


def _run_reveal(a: argparse.Namespace) -> int:
    from imambig.access.grant import read_grant
    from imambig.access.identity import load_identity
    from imambig.stages.share import reveal, write_revealed

    grant = read_grant(a.grant)  # at most the grant limit + 1 byte, whatever the file claims
    public = location(a, a.public) if a.public else None
    out = reveal(grant, load_identity(a.identity), a.owner,
                 location(a, a.model), public=public)
    write_revealed(Path(a.out), out)
    print(f"revealed {len(out.item_ids)} images into {a.out}")
    return 0


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------


def _add_evaluate(sub: Subparsers) -> None:
    d = EvaluateConfig()
    p = sub.add_parser(
        "evaluate", parents=[STORAGE, KEYSTORE_KEY],
        help="quality, privacy and honest rates of encoded stores (the paper's Table 1)",
        description=(
            "Read the image store, the model, the public store and the keystore, and "
            "measure on the test split: authorized reconstructions at k/2 and k, JPEG, "
            "WebP and AVIF within the authorized bytes per image, the public code decoded as is, "
            "and every attack of the suite; bits per pixel from bytes actually stored. "
            "Writes evaluation.json, evaluation.md, grid.png (originals, authorized, "
            "public as is, attacker) and rd.png (rate-distortion curves) to --out."
        ),
        epilog=("example:\n  imambig evaluate --images runs/images --model runs/model "
                "--public runs/public --keys runs/keys --out runs/eval"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", required=True, help="image store (its test split is used)")
    p.add_argument("--model", required=True, help="checkpoint folder the stores were encoded with")
    p.add_argument("--public", required=True, help="public store (root or version URL)")
    p.add_argument("--keys", required=True, help="keystore (root or version URL)")
    p.add_argument("--out", required=True, help="folder URL for the report files")
    p.add_argument("--split", default=d.split)
    p.add_argument("--max-items", type=int, default=d.max_items,
                   help="evaluate at most this many")
    p.add_argument("--attacks", type=_comma_list, default=d.attacks, help="comma list")
    p.add_argument("--codecs", type=_comma_list, default=d.codecs,
                   help="comma list of baselines")
    p.add_argument("--rd-items", type=int, default=d.rd_items,
                   help="items behind the rate-distortion curves (0: no rd.png)")
    p.add_argument("--attacker-items", type=int, default=d.attacker_items,
                   help="training images the attacker ambiguates itself")
    p.add_argument("--releases", type=int, default=d.releases,
                   help="ambiguations of each attacker image the learned inversion trains on")
    p.add_argument("--no-identity", dest="identity", action="store_false",
                   help="skip the face-recognition rows (they need pip install 'imambig[face]')")
    p.add_argument("--grants", type=_comma_list, default=d.grant_fractions,
                   metavar="F,F,...", help="lower-fidelity grant rows, as fractions k_low/k")
    p.add_argument("--no-grantee-attacks", dest="grantee_attacks", action="store_false",
                   help="leave out the grantee attacks beside each grant row")
    p.add_argument("--no-linkage", dest="linkage", action="store_false",
                   help="skip the exact-photo linkage rows")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> int:
    from imambig.access.key_provider import LocalKeyProvider
    from imambig.access.secrets import Secrets
    from imambig.stages.versions import resolve_store
    from imambig.study.evaluate import evaluate_stores

    out = location(a, a.out)
    ev = evaluate_stores(
        location(a, a.images), location(a, a.model), resolve_store(location(a, a.public)),
        resolve_store(location(a, a.keys)),
        LocalKeyProvider.from_secrets(Secrets(secret_sources(a))), evaluate_config(a),
        out=out, log=_say)
    ev.save(out)
    print(ev.markdown())
    print(f"wrote evaluation.json, evaluation.md, grid.png{', rd.png' if a.rd_items else ''}"
          f" to {out}")
    return 0


# ---------------------------------------------------------------------------
# attack
# ---------------------------------------------------------------------------


def _add_attack(sub: Subparsers) -> None:
    d = AttackConfig()
    p = sub.add_parser(
        "attack", parents=[STORAGE],
        help="run the privacy attacks against a trained model's ambiguation",
        description=(
            "Fit the noise model on training images, ambiguate held-out test images with "
            "an owner secret, and attack them as an outsider who holds other training "
            "images of its own. Every attack reports support recall (chance = k/k'), "
            "real-vs-fake ROC AUC and the PSNR/SSIM of its reconstruction, beside the "
            "authorized decode and the public code decoded as is. Prints a table per k' "
            "(and writes JSON with --json)."
        ),
        epilog=("example:\n  imambig attack --model runs/model --images runs/images "
                "--k-public 192,256,384 --json attacks.json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint folder of `imambig train`")
    p.add_argument("--images", required=True, help="image store with train and test splits")
    p.add_argument("--attacks", type=_comma_list, default=d.attacks,
                   help=f"comma list, from: {', '.join(ALL_ATTACKS)} (default: all but lp)")
    p.add_argument("--k-public", type=_comma_list, default=d.k_publics,
                   help="comma list of k' (public non-zeros per map); default 2k")
    p.add_argument("--fit", type=int, default=d.fit_items,
                   help="training images for the noise fit")
    p.add_argument("--own", type=int, default=d.own_items,
                   help="the attacker's own images: the training images the fit leaves, at "
                        "most this many (0: all)")
    p.add_argument("--releases", type=int, default=d.releases,
                   help="ambiguations of each own image (one attacker secret each) that the "
                        "learned inversion trains on")
    p.add_argument("--inversion-epochs", type=int, default=d.inversion_epochs)
    p.add_argument("--k-low", type=_comma_list, default=d.k_lows, metavar="K,K,...",
                   help="also attack lower-fidelity grants of these fidelities as their "
                        "grantees (e.g. 32,64,96): re-encoding, learned inversion, and a "
                        "grantee holding other items' full keys")
    p.add_argument("--key-holder-items", type=int, default=d.key_holder_items,
                   help="other items whose full keys the key-holding grantee has")
    p.add_argument("--targets", type=int, default=d.target_items, help="test images attacked")
    p.add_argument("--second-release", type=_comma_list, default=d.second_releases,
                   help="second releases of each target to compare with its first record "
                        f"(comma list from {', '.join(SECOND_RELEASES)}; 'none' for none)")
    p.add_argument("--second-model", default=d.second_model,
                   help="a model of the same shape trained from scratch: one more second "
                        "release, 'retrained'")
    p.add_argument("--pairs", type=int, default=d.pair_items,
                   help="own near-duplicate pairs the second-release classifier learns from")
    p.add_argument("--no-identity", dest="identity", action="store_false",
                   help="skip the face-recognition rows (they need pip install 'imambig[face]')")
    p.add_argument("--gallery", type=int, default=d.gallery_per_identity,
                   help="gallery photos per test identity (never attacked)")
    p.add_argument("--no-linkage", dest="linkage", action="store_false",
                   help="skip the exact-photo linkage rows")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help="the encoder's arithmetic, as for encode")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.set_defaults(handler=_run_attack)


def _run_attack(a: argparse.Namespace) -> int:
    from imambig.study.privacy_experiment import run_privacy_experiment, to_json

    runs = run_privacy_experiment(location(a, a.model), location(a, a.images),
                                  attack_config(a), log=_say)
    for run in runs:
        print(run.markdown() + "\n")
    if a.json:
        Path(a.json).write_text(to_json(runs))
        print(f"wrote {a.json}")
    return 0


# ---------------------------------------------------------------------------


def _plugin_commands() -> list[Callable[[Subparsers], None]]:
    """``add_command(subparsers)`` of every installed command plug-in (demo, serve)."""
    return [ep.load() for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imambig",
        description=(
            "Privacy-preserving image sharing: encode images into sparse codes, publish "
            "them ambiguated with indistinguishable fake non-zeros, and hand out tiny "
            "per-image keys that reveal the true supports."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--help-all", action="store_true",
                        help="print the help of every sub-command and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (*_plugin_commands(), _add_ingest, _add_train, _add_encode, _add_convert_model, _add_validate,
                _add_versions, _add_prune, _add_forget,
                _add_keys, _add_grant, _add_grant_decoder, _add_reveal, _add_evaluate, _add_attack):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.help_all:
        parser.print_help()
        for name, sp in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
            print(f"\n{'=' * 20} imambig {name} {'=' * 20}")
            sp.print_help()
        return 0
    if not args.command:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        # Expected user errors: one clear line, no traceback.
        print(f"imambig {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StorageUnavailableError as exc:
        # The store did not answer within the retry budget: try again later.
        print(f"imambig {args.command}: {exc}", file=sys.stderr)
        return 4
    except RuntimeError as exc:
        from imambig.stores.lease import LeaseHeld, UnsafeStorage

        if not isinstance(exc, LeaseHeld | UnsafeStorage):
            raise
        print(f"imambig {args.command}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
