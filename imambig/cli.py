"""The ``imambig`` command line: argument parsing only; work happens in library modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from imambig.config import PRESETS, IngestConfig, TrainConfig

Handler = Callable[[argparse.Namespace], int]

EPILOG = """\
typical session:
  imambig ingest ../data/celeba --split identity:0.8 --out runs/images
  imambig train --images runs/images --preset small --epochs 20 --out runs/model
  imambig --help-all          every sub-command's options
"""


def _storage_options(text: str | None) -> dict:
    return json.loads(text) if text else {}


# ---------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    d = IngestConfig()
    p = sub.add_parser(
        "ingest",
        help="turn a folder / CelebA download / fsspec URL of images into a Zarr image store",
        description=(
            "Read every image under SOURCE (a CelebA download with img_align_celeba/, "
            "list_eval_partition.txt and identity_CelebA.txt; any folder of images; or an "
            "fsspec URL such as s3://bucket/prefix), centre-crop and resize it, assign a "
            "train/val/test split and write a chunked uint8 Zarr store at --out. Files that "
            "cannot be used are set aside with a reason in <out>/ingest_report.json; the run "
            "goes on."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", help="folder, CelebA root, or fsspec URL of images")
    p.add_argument("--out", required=True, help="URL or path of the image store to write")
    p.add_argument("--size", type=int, nargs="+", default=[d.height], metavar="PX",
                   help="output HEIGHT [WIDTH] in pixels")
    p.add_argument("--crop", type=int, default=d.crop,
                   help="centre square crop before resizing (default: 178 for CelebA, "
                        "else the largest centred crop of the output aspect ratio)")
    p.add_argument("--split", default=d.split,
                   help="official | random:<train fraction> | identity:<train fraction>; "
                        "the remainder is split evenly into val and test")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of random/identity splits")
    p.add_argument("--limit", type=int, default=None,
                   help="ingest only the first N sources (sorted by name)")
    p.add_argument("--chunk-items", type=int, default=d.chunk_items,
                   help="images per Zarr chunk")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="decode processes (0: one per core)")
    p.add_argument("--storage-options", default=None,
                   help="JSON dict of fsspec options for --out and SOURCE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(handler=_run_ingest)


def _run_ingest(a: argparse.Namespace) -> int:
    from imambig.ingest import ingest

    height = a.size[0]
    width = a.size[1] if len(a.size) > 1 else height
    cfg = IngestConfig(
        height=height, width=width, crop=a.crop, split=a.split, seed=a.seed,
        chunk_items=a.chunk_items, workers=a.workers,
    )
    report = ingest(
        a.source, a.out, cfg, limit=a.limit,
        storage_options=_storage_options(a.storage_options), overwrite=a.overwrite,
    )
    print(report.summary())
    return 0


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train",
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
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="model preset; the store's image size must match it")
    p.add_argument("--k", type=int, default=None, help="override the preset's top-k")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--loss", choices=["bce", "mse"], default=d.loss)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-items", type=int, default=d.max_items,
                   help="use at most this many training images")
    p.add_argument("--val-items", type=int, default=d.val_items)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="optimizer steps between mid-epoch checkpoints")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=d.num_threads,
                   help="torch CPU threads (0: torch default)")
    p.add_argument("--storage-options", default=None, help="JSON dict of fsspec options")
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> int:
    import dataclasses

    from imambig.config import preset
    from imambig.train import train

    model = preset(a.preset)
    if a.k is not None:
        model = dataclasses.replace(model, k=a.k)
    cfg = TrainConfig(
        model=model, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, loss=a.loss,
        seed=a.seed, max_items=a.max_items, val_items=a.val_items,
        checkpoint_every=a.checkpoint_every, device=a.device, num_threads=a.threads,
    )
    result = train(a.images, a.out, cfg, storage_options=_storage_options(a.storage_options))
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------


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
    for add in (_add_ingest, _add_train):
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
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        # Expected user errors: one clear line, no traceback.
        print(f"imambig {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
