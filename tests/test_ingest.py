from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image, ImageFile

import imambig.stages.ingest as ingest_module
from imambig.cli import main
from imambig.config import IngestConfig
from imambig.stages.ingest import DecodeParams, IngestReport, decode_image, discover_source, ingest
from imambig.stores.image_store import ImageStore, open_image_store
from imambig.stores.location import Location

SIZE = 32
CFG = IngestConfig(height=SIZE, width=SIZE, split="random:0.6", chunk_items=4, workers=1)

BAD = {
    "truncated.jpg": "corrupt",
    "text.jpg": "not-an-image",
    "tiny.png": "too-small",
    "huge.png": "too-large",
}


def _save(path: Path, img: Image.Image, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pattern(w: int, h: int) -> Image.Image:
    """Smooth content whose position is easy to check: x ramp in red, y ramp in green."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack(
        [255 * x / (w - 1), 255 * y / (h - 1), 128 + 100 * np.sin(x / 9.0) * np.cos(y / 7.0)], -1
    )
    return Image.fromarray(a.round().astype(np.uint8))


def _exif_rotated_jpeg() -> bytes:
    """Stored 60x40, left half red, right half blue; EXIF says: rotate 90° clockwise."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def build_broken_folder(root: Path) -> dict[str, str]:
    """A folder of good, convertible and bad files; returns good item id -> kind."""
    good: dict[str, str] = {}

    def add(rel: str, kind: str, img: Image.Image, **kwargs: object) -> None:
        _save(root / rel, img, **kwargs)
        good[rel] = kind

    add("a_pattern.jpg", "rgb", _pattern(300, 200), quality=95)
    add("b_solid.png", "solid", Image.new("RGB", (64, 64), (200, 30, 30)))
    add("c_wide.webp", "rgb", _noise(120, 40, 2))
    add("d.bmp", "rgb", _noise(50, 70, 3))
    add("e.tif", "rgb", _noise(33, 33, 4))
    add("sub/deeper/f_upper.JPG", "rgb", _noise(90, 90, 5))
    add("g_gray.jpeg", "gray", Image.new("L", (40, 40), 128))
    add("h_transparent.png", "white", Image.new("RGBA", (40, 40), (0, 0, 0, 0)))
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    add("i_palette_transparent.gif", "white", pal, transparency=0)
    add("j_small_ok.png", "rgb", _noise(16, 20, 6))  # exactly min_side
    (root / "k_rotated.jpg").write_bytes(_exif_rotated_jpeg())
    good["k_rotated.jpg"] = "rotated"

    # Converted, not set aside.
    add("cmyk.jpg", "cmyk-red", Image.new("CMYK", (48, 48), (0, 255, 255, 0)), quality=95)
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
    gray16 = Image.fromarray(ramp)
    assert gray16.mode == "I;16"
    add("gray16.png", "ramp16", gray16)

    # Bad files.
    buf = io.BytesIO()
    _noise(200, 200, 7).save(buf, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "text.jpg").write_text("this is not a picture\n")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(root / "tiny.png")
    Image.new("1", (20000, 20000)).save(root / "huge.png")  # tiny on disk

    # Not considered at all.
    (root / "notes.txt").write_text("hello")
    (root / "sub" / "README").write_text("hello")
    return good


@dataclass
class Ingested:
    root: Path
    good: dict[str, str]
    out: Path
    report: IngestReport
    store: ImageStore


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    tmp = tmp_path_factory.mktemp("broken")
    root = tmp / "src"
    good = build_broken_folder(root)
    out = tmp / "store"
    report = ingest(Location(str(root)), Location(str(out)), CFG)
    return Ingested(root, good, out, report, open_image_store(Location(str(out))))


def _image(b: Ingested, item: str) -> np.ndarray:
    ids = b.store.item_ids().tolist()
    return b.store.read([ids.index(item)])[0].astype(int)


def test_every_bad_file_is_set_aside_with_its_reason(broken: Ingested) -> None:
    got = {r["item"]: r["reason"] for r in broken.report.set_aside}
    assert got == BAD
    assert all(r["detail"] for r in broken.report.set_aside)
    assert broken.report.reasons == {reason: 1 for reason in BAD.values()}
    assert broken.report.ignored == 2


def test_every_good_file_arrives(broken: Ingested) -> None:
    r = broken.report
    assert r.written == len(broken.good) == broken.store.n_items
    assert r.seen == r.written + r.n_set_aside
    assert broken.store.item_ids().tolist() == sorted(broken.good)
    assert sum(r.splits.values()) == r.written
    assert broken.store.read(slice(None)).shape == (r.written, SIZE, SIZE, 3)
    assert (broken.store.identities() == -1).all()


def test_pixels_are_sensible(broken: Ingested) -> None:
    solid = _image(broken, "b_solid.png")
    assert np.abs(solid - [200, 30, 30]).max() <= 2
    gray = _image(broken, "g_gray.jpeg")
    assert np.abs(gray - 128).max() <= 3
    for item in ("h_transparent.png", "i_palette_transparent.gif"):
        assert _image(broken, item).min() >= 250, item  # transparency becomes white
    # Centre crop 200x200 of the 300x200 picture, resized: compare with plain PIL.
    with Image.open(broken.root / "a_pattern.jpg") as src:
        ref = np.asarray(
            src.convert("RGB").crop((50, 0, 250, 200)).resize((SIZE, SIZE), Image.LANCZOS)
        ).astype(int)
    got = _image(broken, "a_pattern.jpg")
    assert np.abs(got - ref).mean() < 2.0 and np.abs(got - ref).max() < 24
    assert got[:, :, 0].std() > 40  # real content, not a blank fill


def test_cmyk_and_16_bit_are_converted(broken: Ingested) -> None:
    red = _image(broken, "cmyk.jpg").reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    ramp = _image(broken, "gray16.png")
    assert (ramp[..., 0] == ramp[..., 1]).all()
    row = ramp[SIZE // 2, :, 0]
    # The full 16-bit range maps to the full 8-bit range: scaled, not clipped.
    assert row[0] <= 8 and row[-1] >= 247
    assert abs(int(row[SIZE // 2]) - 128) <= 12
    assert (np.diff(row) >= 0).all()


def test_exif_orientation_is_applied(broken: Ingested) -> None:
    img = _image(broken, "k_rotated.jpg")
    # Upright, the red half is on top and the blue half below.
    assert img[2, :, 0].mean() > 200 and img[2, :, 2].mean() < 60
    assert img[-3, :, 2].mean() > 200 and img[-3, :, 0].mean() < 60


def test_report_json_beside_store(broken: Ingested) -> None:
    saved = json.loads((broken.out / "ingest_report.json").read_text())
    assert saved["written"] == broken.report.written
    assert {r["item"] for r in saved["set_aside"]} == set(BAD)
    text = broken.report.summary()
    assert str(broken.out) in text and "ingest_report.json" in text
    assert "set aside 4 of" in text
    attrs = broken.store.attrs
    assert attrs["set_aside"] == 4 and attrs["source"] == str(broken.root)
    assert attrs["split_spec"] == "random:0.6" and attrs["crop"] is None


def test_huge_image_rejected_from_header(
    broken: Ingested, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = (broken.root / "huge.png").read_bytes()
    small_limit = DecodeParams(SIZE, SIZE, None, 16, max_pixels=1000)
    for params in (small_limit, DecodeParams(SIZE, SIZE, None, 16, 10**12)):
        with pytest.raises(Exception) as info:
            decode_image(data, params)
        assert getattr(info.value, "reason", None) == "too-large"
    # A normal image does get decoded, so the guard above is effective.
    buf = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buf, "PNG")
    with pytest.raises(Exception) as info:
        decode_image(buf.getvalue(), small_limit)
    assert getattr(info.value, "reason", None) == "too-large"
    with pytest.raises(Exception) as info:
        decode_image(buf.getvalue(), DecodeParams(SIZE, SIZE, None, 16, 10**6))
    assert getattr(info.value, "reason", None) == "corrupt"


def test_worker_processes_give_the_same_store(
    broken: Ingested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "_MAX_BATCH_ITEMS", 3)  # several tasks

    def not_here(*args: object) -> None:
        raise AssertionError("decoded in the main process")

    # Spawned workers import a fresh module: only the main process sees this patch.
    monkeypatch.setattr(ingest_module, "_decode_batch_with", not_here)
    out = tmp_path / "parallel"
    report = ingest(Location(str(broken.root)), Location(str(out)), IngestConfig(**{**CFG.__dict__, "workers": 2}))
    assert report.set_aside == broken.report.set_aside
    store = open_image_store(Location(str(out)))
    assert np.array_equal(store.item_ids(), broken.store.item_ids())
    assert np.array_equal(store.splits(), broken.store.splits())
    assert np.array_equal(store.read(slice(None)), broken.store.read(slice(None)))


def test_existing_store_is_appended_to_or_overwritten(broken: Ingested, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _save(src / "x.png", _noise(20, 20, 0))
    _save(src / "y.png", _noise(20, 20, 1))
    out = str(tmp_path / "out")
    ingest(Location(str(src)), Location(str(out)), CFG)
    assert ingest(Location(str(src)), Location(str(out)), CFG).written == 0  # nothing new
    (src / "y.png").unlink()
    assert ingest(Location(str(src)), Location(str(out)), CFG, overwrite=True).written == 1
    assert open_image_store(Location(str(out))).n_items == 1

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not an image store"):
        ingest(Location(str(src)), Location(str(foreign)), CFG, overwrite=True)
    assert (foreign / "keep.txt").exists()


def test_incomplete_store_is_replaced_without_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _save(src / "x.png", _noise(20, 20, 0))
    out = tmp_path / "out"
    ingest(Location(str(src)), Location(str(out)), CFG)
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["complete"] = False  # as if the run had been killed
    (out / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not completely written"):
        open_image_store(Location(str(out)))
    ingest(Location(str(src)), Location(str(out)), CFG)
    assert open_image_store(Location(str(out))).n_items == 1


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ingest(Location(str(tmp_path / "nope")), Location(str(tmp_path / "out")), CFG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ingest(Location(str(tmp_path / "empty")), Location(str(tmp_path / "out")), CFG)
    _save(tmp_path / "plain" / "x.png", _noise(20, 20, 0))
    with pytest.raises(ValueError, match="needs a partition file"):
        ingest(Location(str(tmp_path / "plain")), Location(str(tmp_path / "out")), IngestConfig(split="official"))
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def _fake_celeba(root: Path) -> None:
    """CelebA's layout with generated pictures: 12 listed files, one missing on disk."""
    names = [f"{i:06d}.jpg" for i in range(1, 13)]
    for i, name in enumerate(names[:-1]):
        _save(root / "img_align_celeba" / name, _noise(178, 218, i), quality=90)
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {0 if i < 8 else 1 if i < 10 else 2}\n" for i, n in enumerate(names))
    )
    (root / "identity_CelebA.txt").write_text(
        "".join(f"{n} {100 + i // 3}\n" for i, n in enumerate(names))
    )


def test_celeba_layout_official_split(tmp_path: Path) -> None:
    root = tmp_path / "celeba"
    _fake_celeba(root)
    src = discover_source(Location(str(root)))
    assert src.is_celeba and src.partition is not None and src.identities is not None
    report = ingest(Location(str(root)), Location(str(tmp_path / "out")), IngestConfig(height=16, width=16, workers=1))
    assert report.set_aside == [
        {"item": "000012.jpg", "reason": "missing",
         "detail": "listed in the partition file but not found"}
    ]
    store = open_image_store(Location(str(tmp_path / "out")))
    assert store.item_ids().tolist() == [f"{i:06d}.jpg" for i in range(1, 12)]
    assert store.splits().tolist() == [0] * 8 + [1, 1, 2]
    assert store.identities().tolist() == [100 + i // 3 for i in range(11)]
    assert store.attrs["crop"] == 178  # CelebA's default crop


def test_memory_urls_round_trip() -> None:
    base = f"memory://imambig-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        for i in range(5):
            buf = io.BytesIO()
            _noise(40 + i, 30, i).save(buf, "PNG")
            fs.pipe_file(f"{base}/src/d{i % 2}/{i}.png", buf.getvalue())
        fs.pipe_file(f"{base}/src/broken.png", b"\x89PNG not really")
        report = ingest(Location(f"{base}/src"), Location(f"{base}/out"), CFG)
        assert report.written == 5
        assert [r["reason"] for r in report.set_aside] == ["not-an-image"]
        store = open_image_store(Location(f"{base}/out"))
        expected = ["d0/0.png", "d0/2.png", "d0/4.png", "d1/1.png", "d1/3.png"]
        assert store.item_ids().tolist() == expected
        assert store.read(slice(None)).shape == (5, SIZE, SIZE, 3)
        assert json.loads(fs.cat_file(f"{base}/out/ingest_report.json"))["written"] == 5
    finally:
        fs.rm(base.removeprefix("memory://"), recursive=True)


def test_file_url_source(tmp_path: Path) -> None:
    _save(tmp_path / "src" / "a.png", _noise(30, 30, 0))
    report = ingest(Location((tmp_path / "src").as_uri()), Location((tmp_path / "out").as_uri()), CFG)
    assert report.written == 1
    assert open_image_store(Location(str(tmp_path / "out"))).item_ids().tolist() == ["a.png"]


def test_cli_ingest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        _save(tmp_path / "src" / f"{i}.png", _noise(30, 30, i))
    (tmp_path / "src" / "bad.png").write_text("no")
    out = str(tmp_path / "out")
    args = ["ingest", str(tmp_path / "src"), "--out", out, "--split", "random:0.5",
            "--size", "24", "20", "--workers", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "wrote 3 images" in text and "not-an-image 1" in text
    store = open_image_store(Location(str(out)))
    assert (store.height, store.width) == (24, 20)
    assert main(args) == 0  # exists: an append, with nothing new
    assert "added 0 images" in capsys.readouterr().out
    assert main([*args[:4], "--size", "32"]) == 2  # an append keeps the store's size
    assert "size (24, 20) (asked: (32, 32))" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--overwrite" in text and "--split" in text


@pytest.mark.celeba
def test_celeba_subset(celeba_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "celeba"
    report = ingest(
        Location(str(celeba_dir)), Location(str(out)),
        IngestConfig(split="identity:0.8", workers=2, limit=600),
    )
    assert report.written == 600 and not report.set_aside
    store = open_image_store(Location(str(out)))
    assert (store.n_items, store.height, store.width) == (600, 128, 128)
    names = sorted(p.name for p in (celeba_dir / "img_align_celeba").iterdir())[:600]
    assert store.item_ids().tolist() == names
    table = dict(
        line.split() for line in (celeba_dir / "identity_CelebA.txt").read_text().splitlines()
    )
    assert store.identities().tolist() == [int(table[n]) for n in names]
    ids, splits = store.identities(), store.splits()
    assert not set(ids[splits == 0]) & set(ids[splits != 0])
    assert 0.7 < report.splits["train"] / 600 < 0.9
    assert report.splits["val"] > 0 and report.splits["test"] > 0
    attrs = store.attrs
    assert attrs["crop"] == 178 and attrs["split_spec"] == "identity:0.8"
    assert attrs["n_items"] == 600 and attrs["complete"] is True
    faces = store.read(np.arange(0, 600, 50))
    assert 40 < faces.mean() < 215 and faces.std() > 30
