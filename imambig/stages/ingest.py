"""Ingestion: any folder / CelebA download / fsspec URL of images -> an image store.

Stages:

1. ``discover_source`` lists the source files (sorted by relative path) and, for a CelebA
   download, reads identities and the official partition.
2. Worker processes read and decode batches (``decode_image``): full decode so damaged
   files are caught, conversion of every colour mode to RGB, EXIF orientation, centre
   crop and resize. Unusable files are set aside with a reason, never dropped silently.
3. The main process appends the good images in source order to a one-chunk buffer and
   writes each full chunk, so memory stays bounded whatever the data set size. The store
   is laid out for every candidate first and shrunk to the good items at the end.
4. Splits are assigned to the good items, labels written, ``ingest_report.json`` saved
   beside the arrays, and only then is the store marked complete.

Into an existing store, ingest appends: the sources whose name the store does not hold
are added at its end (existing items never move), a known name whose file changed is
reported and left alone, a new name with the bytes of a held item is reported as a
duplicate, and appended items get splits that keep every held identity's split
(``imambig.stores.splits.extend_splits``). The store's own size, crop, split and seed
rule; a config that asks for others is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import signal
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import zarr
from fsspec import AbstractFileSystem
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from imambig.config import IngestConfig
from imambig.errors import StorageUnavailableError
from imambig.stores.image_store import FORGOTTEN, ImageStoreWriter, forgotten_id, store_state
from imambig.stores.location import Location
from imambig.stores.splits import (
    NO_PARTITION,
    SPLIT_NAMES,
    UNKNOWN_IDENTITY,
    assign_splits,
    extend_splits,
    parse_split_spec,
    split_counts,
)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
CELEBA_IMAGES = "img_align_celeba"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_IDENTITY = "identity_CelebA.txt"
CELEBA_CROP = 178  # the paper: centre crop 178x178 of the 178x218 aligned faces
REPORT_NAME = "ingest_report.json"

# Output bytes per decode task: small enough to keep a few tasks in flight per worker
# cheaply, large enough that inter-process overhead stays negligible.
_BATCH_BYTES = 16 * 2**20
_MAX_BATCH_ITEMS = 64
_PREFETCH_PER_WORKER = 2


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceEntry:
    item_id: str  # path relative to the image root, '/'-separated
    path: str | None  # path inside the file system; None: listed but missing


@dataclass
class Source:
    location: Location
    fs: AbstractFileSystem
    entries: list[SourceEntry]  # sorted by item id
    identities: dict[str, int] | None = None
    partition: dict[str, int] | None = None
    is_celeba: bool = False
    ignored: int = 0  # files without an image extension


def _has_image_extension(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _list_images(fs: AbstractFileSystem, root: str) -> tuple[dict[str, str], int]:
    """Relative id -> path of the image-named files under ``root``, and the others' count."""
    found: dict[str, str] = {}
    ignored = 0
    prefix = root.rstrip("/") + "/"
    for path in fs.find(root, withdirs=False):
        rel = path[len(prefix):] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
        if _has_image_extension(rel):
            found[rel] = path
        else:
            ignored += 1
    return found, ignored


def _read_table(fs: AbstractFileSystem, path: str) -> dict[str, int]:
    """A CelebA ``<file> <int>`` text table."""
    table: dict[str, int] = {}
    text = fs.cat_file(path).decode("utf-8")
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            name, value = fields
            table[name] = int(value)
        except ValueError:
            raise ValueError(
                f"{path}:{line_no}: expected '<file> <integer>', got {line!r}"
            ) from None
    return table


def discover_source(location: Location) -> Source:
    """List the images at ``location`` (folder, CelebA root or URL prefix), sorted by id."""
    fs, root = location.filesystem()
    if not fs.exists(root):
        raise FileNotFoundError(f"source {location} does not exist")
    if not fs.isdir(root):
        raise ValueError(f"source {location} is a file; give the folder (or URL prefix) of the images")

    img_dir, partition_path = f"{root}/{CELEBA_IMAGES}", f"{root}/{CELEBA_PARTITION}"
    if fs.isdir(img_dir) and fs.isfile(partition_path):
        found, ignored = _list_images(fs, img_dir)
        partition = _read_table(fs, partition_path)
        identity_path = f"{root}/{CELEBA_IDENTITY}"
        identities = _read_table(fs, identity_path) if fs.isfile(identity_path) else None
        # Files listed but absent are kept as entries so that they are reported.
        ids = sorted(found.keys() | partition.keys())
        return Source(
            location, fs, [SourceEntry(i, found.get(i)) for i in ids],
            identities=identities, partition=partition, is_celeba=True, ignored=ignored,
        )

    found, ignored = _list_images(fs, root)
    return Source(location, fs, [SourceEntry(i, found[i]) for i in sorted(found)],
                  ignored=ignored)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


class SetAside(Exception):
    """A source file that cannot become an image, with a short reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeParams:
    height: int
    width: int
    crop: int | None
    min_side: int
    max_pixels: int


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB version of ``img``; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES:
        # Integer modes come from 16-bit files: scale 0..65535 to 0..255 (not clip).
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode == "F":
        # Float data has no fixed range: keep 0..1 data as is, else stretch min..max.
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(a * 255).astype(np.uint8)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK (Adobe-inverted handled by PIL), YCbCr, ...


def crop_box_size(width: int, height: int, p: DecodeParams) -> tuple[float, float]:
    """Width and height of the centred crop taken from a ``width`` x ``height`` image.

    With ``p.crop`` the box is ``crop`` pixels on its longer side and has the output's
    aspect ratio (``crop`` x ``crop`` for square outputs); when that does not fit, or
    without ``crop``, it is the largest centred box of the output's aspect ratio.
    """
    aspect = p.width / p.height
    if p.crop is not None:
        bw, bh = (p.crop, p.crop / aspect) if aspect >= 1 else (p.crop * aspect, p.crop)
        if bw <= width and bh <= height:
            return float(bw), float(bh)
    if width / height > aspect:
        return height * aspect, float(height)
    return float(width), width / aspect


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: the pixels may still be fine
        return 1


def decode_image(data: bytes, p: DecodeParams) -> np.ndarray:
    """Bytes of an image file -> (height, width, 3) uint8; raises ``SetAside``."""
    with warnings.catch_warnings():
        # PIL warns about harmless oddities (EXIF, palettes); bombs become errors.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SetAside("too-large", str(exc)) from None
        except UnidentifiedImageError:
            raise SetAside(
                "not-an-image", "not a recognised image format" if data else "empty file"
            ) from None
        except Exception as exc:
            raise SetAside("corrupt", f"{type(exc).__name__}: {exc}") from None

        # Size checks use the header only: nothing has been decoded yet.
        w, h = img.size
        if w * h > p.max_pixels:
            raise SetAside("too-large", f"{w}x{h} = {w * h} pixels > max_pixels {p.max_pixels}")
        if min(w, h) < p.min_side:
            raise SetAside("too-small", f"{w}x{h}: a side is below min_side {p.min_side}")

        orientation = _orientation(img)
        ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # size once upright
        bw, bh = crop_box_size(ow, oh, p)
        reduce_by = min(bw / p.width, bh / p.height)
        if reduce_by >= 2 and img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the output size.
            img.draft(img.mode, (math.ceil(w / reduce_by), math.ceil(h / reduce_by)))
        try:
            img.load()  # full decode: truncated or damaged data fails here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise SetAside("too-large", str(exc)) from None
        except Exception as exc:
            raise SetAside("corrupt", f"{type(exc).__name__}: {exc}") from None

        # Unusable orientation data: keep the stored orientation.
        with contextlib.suppress(Exception):
            img = ImageOps.exif_transpose(img)
        try:
            img = to_rgb(img)
        except Exception as exc:
            raise SetAside("unsupported-mode", f"mode {img.mode}: {exc}") from None

        sx, sy = img.width / ow, img.height / oh  # < 1 after a JPEG draft
        left, top = (ow - bw) / 2, (oh - bh) / 2
        box = (left * sx, top * sy, (left + bw) * sx, (top + bh) * sy)
        # reducing_gap: big reductions first bin by an integer factor (fast), then
        # Lanczos the last <3x: visually the same as Lanczos all the way.
        out = img.resize((p.width, p.height), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        return np.asarray(out, dtype=np.uint8)


@dataclass
class _BatchResult:
    positions: list[int]  # positions (in the decode list) of the good images
    images: np.ndarray  # (len(positions), H, W, 3) uint8
    set_aside: list[dict[str, str]]
    digests: list[str] = field(default_factory=list)  # sha-256 of each good source file


def _decode_batch_with(
    fs: AbstractFileSystem, p: DecodeParams, batch: list[tuple[int, str, str]]
) -> _BatchResult:
    positions: list[int] = []
    images: list[np.ndarray] = []
    digests: list[str] = []
    set_aside: list[dict[str, str]] = []
    for pos, item_id, path in batch:
        try:
            try:
                data = fs.cat_file(path)
            except StorageUnavailableError:
                raise  # the store is down, the file may be fine: stop, set nothing aside
            except Exception as exc:
                raise SetAside("unreadable", f"{type(exc).__name__}: {exc}") from None
            images.append(decode_image(data, p))
            positions.append(pos)
            digests.append(hashlib.sha256(data).hexdigest())
        except SetAside as exc:
            set_aside.append({"item": item_id, "reason": exc.reason, "detail": exc.detail})
        except StorageUnavailableError:
            raise
        except Exception as exc:  # anything unforeseen: one file must not stop the run
            set_aside.append(
                {"item": item_id, "reason": "failed", "detail": f"{type(exc).__name__}: {exc}"}
            )
    stacked = (
        np.stack(images) if images else np.empty((0, p.height, p.width, 3), dtype=np.uint8)
    )
    return _BatchResult(positions, stacked, set_aside, digests)


# Per-process state of decode workers, set once by the pool initializer so that the
# file system (e.g. an s3fs with credentials) is not re-created for every task.
_worker_fs: AbstractFileSystem | None = None
_worker_params: DecodeParams | None = None


def _init_worker(fs: AbstractFileSystem, p: DecodeParams) -> None:
    global _worker_fs, _worker_params
    _worker_fs, _worker_params = fs, p
    # Ctrl-C reaches the whole process group; the parent alone handles it and stops the
    # pool, instead of every worker printing its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_batch(batch: list[tuple[int, str, str]]) -> _BatchResult:
    assert _worker_fs is not None and _worker_params is not None
    return _decode_batch_with(_worker_fs, _worker_params, batch)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _in_order(
    batches: Iterable[list[tuple[int, str, str]]],
    fs: AbstractFileSystem,
    p: DecodeParams,
    workers: int,
) -> Iterator[_BatchResult]:
    """Decode results in batch order, with at most a few batches in flight per worker."""
    if workers <= 1:
        for batch in batches:
            yield _decode_batch_with(fs, p, batch)
        return
    # spawn, not fork: the parent holds Zarr's and fsspec's event-loop threads, which a
    # forked child would inherit in an undefined state.
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(fs, p),
    )
    try:
        todo = iter(batches)
        first = itertools.islice(todo, workers * _PREFETCH_PER_WORKER)
        pending: deque[Future[_BatchResult]] = deque(pool.submit(_decode_batch, b) for b in first)
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_decode_batch, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


@dataclass
class IngestReport:
    source: str
    out: str
    seen: int = 0  # image files found (including listed-but-missing ones)
    written: int = 0
    splits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLIT_NAMES, 0))
    reasons: dict[str, int] = field(default_factory=dict)  # set-aside count per reason
    set_aside: list[dict[str, str]] = field(default_factory=list)  # item, reason, detail
    ignored: int = 0  # files without an image extension, not considered
    held: int = 0  # items the store held before this run (an append)
    elapsed_s: float = 0.0
    report_url: str = ""

    @property
    def n_set_aside(self) -> int:
        return len(self.set_aside)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_set_aside": self.n_set_aside}

    def summary(self) -> str:
        split_text = ", ".join(f"{name} {self.splits.get(name, 0):,}" for name in SPLIT_NAMES)
        if self.held:
            lines = [f"added {self.written:,} images to {self.out} ({split_text}); it held "
                     f"{self.held:,} and holds {self.held + self.written:,}"]
        else:
            lines = [f"wrote {self.written:,} images to {self.out} ({split_text})"]
        if self.set_aside:
            top = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in top[:4])
            more = f", {len(top) - 4} more reasons" if len(top) > 4 else ""
            lines.append(
                f"set aside {self.n_set_aside:,} of {self.seen:,} files: {reasons}{more}"
            )
        else:
            lines.append(f"set aside none of {self.seen:,} files")
        if self.ignored:
            lines.append(f"ignored {self.ignored:,} files without an image extension")
        lines.append(f"report: {self.report_url} ({self.elapsed_s:.1f} s)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------


def _batch_items(p: DecodeParams) -> int:
    return max(1, min(_MAX_BATCH_ITEMS, _BATCH_BYTES // (p.height * p.width * 3)))


@dataclass
class _Held:
    """What an existing store holds, for an append."""

    writer: ImageStoreWriter
    start: int  # items held (appends begin here)
    ids: np.ndarray
    digests: np.ndarray
    splits: np.ndarray
    identities: np.ndarray


def stored_settings(out: Location) -> IngestConfig | None:
    """The settings the image store at ``out`` was ingested with (which an append must
    keep), or None where there is none."""
    if store_state(out) not in ("complete", "incomplete"):
        return None
    group = zarr.open_group(out.zarr_store(mode="r"), mode="r")
    a = group.attrs.asdict()
    d = IngestConfig()
    return IngestConfig(height=a["height"], width=a["width"], crop=a.get("crop"),
                        split=a.get("split_spec", d.split), seed=a.get("seed", d.seed),
                        chunk_items=int(group["images"].chunks[0]))


def _settings(cfg: IngestConfig, crop: int | None) -> dict[str, Any]:
    return {"size": (cfg.height, cfg.width), "crop": crop, "split": cfg.split,
            "seed": cfg.seed}


def _open_held(out: Location, crop: int | None, spec: str, cfg: IngestConfig) -> _Held:
    writer = ImageStoreWriter.open(out)  # refuses v1 stores, which hold no digests
    stored = stored_settings(out)
    assert stored is not None
    held = _settings(stored, stored.crop)
    wanted = _settings(replace(cfg, split=spec), crop)
    differ = [f"{k} {held[k]} (asked: {wanted[k]})" for k in wanted if wanted[k] != held[k]]
    if differ:
        raise ValueError(f"image store {out} holds images ingested with {', '.join(differ)}; "
                         "appends keep the store's settings (leave those flags out), or pass "
                         "--overwrite to rebuild it")
    start = writer.begin_append()
    g = writer.group
    return _Held(writer, start, np.array(g["item_id"][:start].tolist(), dtype=str),
                 np.array(g["source_digest"][:start].tolist(), dtype=str),
                 np.asarray(g["split"][:start]), np.asarray(g["identity"][:start]))


def _changed(src: Source, known: list[SourceEntry], held: _Held) -> list[dict[str, str]]:
    """Held items whose source file now has other bytes (reported, never replaced)."""
    digest_of = dict(zip(held.ids.tolist(), held.digests.tolist(), strict=True))
    out = []
    for i in range(0, len(known), 256):
        batch = [e for e in known[i : i + 256] if e.path is not None]
        data = src.fs.cat([e.path for e in batch], on_error="return")
        for e in batch:
            got = data.get(e.path)
            if isinstance(got, bytes) and hashlib.sha256(got).hexdigest() != digest_of[e.item_id]:
                out.append({"item": e.item_id, "reason": "changed",
                            "detail": "the file differs from the one ingested under this "
                                      "name; the store keeps the ingested image (ingest it "
                                      "under a new name to add it)"})
    return out


def ingest(
    source: Location,
    out: Location,
    cfg: IngestConfig,
    *,
    overwrite: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest the images of ``source`` into a new image store at ``out``, or append the
    ones it does not hold to the store there (see the module docstring).

    ``cfg.limit`` keeps only the first N source files (sorted by id); ``on_progress(n)``
    is called after each decoded batch with the number of files it covered.
    """
    started = time.perf_counter()
    spec = parse_split_spec(cfg.split)  # fail on a bad spec before any work
    if min(cfg.height, cfg.width, cfg.chunk_items, cfg.min_side) < 1:
        raise ValueError("height, width, chunk_items and min_side must be positive")
    if cfg.crop is not None and cfg.crop < 1:
        raise ValueError(f"crop must be positive, got {cfg.crop}")
    if cfg.limit is not None and cfg.limit < 0:
        raise ValueError(f"limit must be >= 0, got {cfg.limit}")

    state = store_state(out)
    if state == "foreign":
        raise ValueError(f"{out} exists and is not an image store; refusing to replace it")
    appending = not overwrite and (
        state == "complete" or (state == "incomplete" and _append_died(out)))

    src = discover_source(source)
    if not src.entries:
        raise ValueError(f"no image files found under {source}")
    if spec.kind == "official" and src.partition is None:
        raise ValueError(NO_PARTITION)
    entries = src.entries if cfg.limit is None else src.entries[: cfg.limit]
    crop = cfg.crop if cfg.crop is not None else (CELEBA_CROP if src.is_celeba else None)
    held = _open_held(out, crop, str(spec), cfg) if appending else None

    report = IngestReport(source=source.url, out=out.url, seen=len(entries),
                          ignored=src.ignored, held=0 if held is None else held.start)
    if held is not None:
        names = set(held.ids.tolist())
        report.set_aside += _changed(src, [e for e in entries if e.item_id in names], held)
        report.set_aside += [_forgotten(e.item_id) for e in entries
                             if forgotten_id(e.item_id) in names]
        entries = [e for e in entries
                   if e.item_id not in names and forgotten_id(e.item_id) not in names]
    todo: list[tuple[str, str]] = []  # (item id, path) of the files to decode
    for e in entries:
        if e.path is None:
            detail = "listed in the partition file but not found"
            report.set_aside.append({"item": e.item_id, "reason": "missing", "detail": detail})
        elif spec.kind == "official" and e.item_id not in (src.partition or {}):
            detail = f"not listed in {CELEBA_PARTITION}"
            report.set_aside.append({"item": e.item_id, "reason": "no-partition", "detail": detail})
        else:
            todo.append((e.item_id, e.path))

    params = DecodeParams(cfg.height, cfg.width, crop, cfg.min_side, cfg.max_pixels)
    if held is None:
        writer = ImageStoreWriter.create(
            out, n_items=len(todo), height=cfg.height, width=cfg.width,
            chunk_items=cfg.chunk_items,
            attrs={"source": source.url, "split_spec": str(spec), "seed": cfg.seed,
                   "crop": crop},
        )
        base = 0
        held_by_digest: dict[str, str] = {}
    else:
        writer, base = held.writer, held.start
        writer.resize(base + len(todo))
        held_by_digest = dict(zip(held.digests.tolist(), held.ids.tolist(), strict=True))

    step = _batch_items(params)
    batches = (
        [(pos, *todo[pos]) for pos in range(i, min(i + step, len(todo)))]
        for i in range(0, len(todo), step)
    )
    n_batches = math.ceil(len(todo) / step)
    workers = max(1, min(cfg.workers or _available_cpus(), n_batches))
    if "memory" in _protocols(src.fs):
        workers = 1  # an in-memory file system is private to this process

    chunk = writer.chunk_items
    buffer = np.empty((chunk, cfg.height, cfg.width, 3), dtype=np.uint8)
    filled = 0  # images in the buffer
    written = base  # items already flushed to the store
    good_positions: list[int] = []
    digests: list[str] = []

    def flush() -> None:
        # An append's first chunk may be partly held: only the one writer touches it.
        if written % chunk:
            writer.write_tail(written, buffer[:filled])
        else:
            writer.write_images(written, buffer[:filled])

    with tqdm(total=len(todo), unit="img", desc="ingest", disable=None) as bar:
        for result in _in_order(batches, src.fs, params, workers):
            report.set_aside.extend(result.set_aside)
            keep = []
            for j, (pos, digest) in enumerate(zip(result.positions, result.digests,
                                                  strict=True)):
                if held_by_digest.get(digest, "").startswith(FORGOTTEN):
                    report.set_aside.append(_forgotten(todo[pos][0], " (the same bytes)"))
                elif digest in held_by_digest:
                    report.set_aside.append({
                        "item": todo[pos][0], "reason": "duplicate",
                        "detail": f"the same bytes as held item {held_by_digest[digest]}"})
                else:
                    keep.append(j)
                    good_positions.append(pos)
                    digests.append(digest)
            images = result.images[keep]
            taken = 0
            while taken < len(images):
                room = chunk - written % chunk  # up to the next chunk boundary
                n = min(room - filled, len(images) - taken)
                buffer[filled : filled + n] = images[taken : taken + n]
                filled, taken = filled + n, taken + n
                if filled == room:
                    flush()
                    written, filled = written + filled, 0
            covered = len(result.positions) + len(result.set_aside)
            bar.update(covered)
            if on_progress is not None:
                on_progress(covered)

    n_total = written + filled
    writer.resize(n_total)
    if filled:
        flush()

    item_ids = [todo[pos][0] for pos in good_positions]
    known = src.identities or {}
    identities = np.array([known.get(i, UNKNOWN_IDENTITY) for i in item_ids], dtype=np.int64)
    if held is None:
        splits = assign_splits(
            item_ids, spec, seed=cfg.seed, identities=identities, partition=src.partition
        )
    else:
        splits = extend_splits(
            item_ids, spec, held_ids=held.ids.tolist(), held_identities=held.identities,
            held_splits=held.splits, seed=cfg.seed, identities=identities,
            partition=src.partition)
    writer.write_labels(np.array(item_ids, dtype=str), splits, identities,
                        np.array(digests, dtype=str), start=base)

    report.written = len(item_ids)
    report.splits = split_counts(splits)
    report.set_aside.sort(key=lambda r: r["item"])
    report.reasons = dict(sorted(Counter(r["reason"] for r in report.set_aside).items()))
    report_location = out.join(REPORT_NAME)
    report.report_url = report_location.url
    report.elapsed_s = round(time.perf_counter() - started, 3)
    report_location.write_bytes(json.dumps(report.to_dict(), indent=1).encode())

    whole = split_counts(np.asarray(writer.group["split"][:]))
    writer.finish(set_aside=report.n_set_aside, split_counts=whole, report=REPORT_NAME)
    return report


def _forgotten(name: str, how: str = "") -> dict[str, str]:
    return {"item": name, "reason": "forgotten",
            "detail": f"removed from the collection at the owner's request{how}; never "
                      "ingested again"}


def _append_died(out: Location) -> bool:
    """Whether the incomplete store at ``out`` is an append that did not finish (and is
    to be cut back and appended again) rather than a first ingest that died."""
    try:
        return "append_from" in ImageStoreWriter.open(out).group.attrs
    except ValueError:
        return False


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
