"""Model files never run code: safetensors + JSON, the model id checked before any tensor
is built, pickles refused (issue #12, item 1)."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from imambig.cli import main
from imambig.config import PRESETS
from imambig.errors import ModelFormatError, TamperedError
from imambig.model import checkpoint as ckpt
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stores.location import Location


class _Payload:
    """Unpickling this runs a shell command (what a crafted model.pt does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model(tmp_path: Path) -> tuple[Location, str]:
    torch.manual_seed(0)
    folder = Location(str(tmp_path / "model"))
    return folder, ckpt.save_model(folder, SparseAutoencoder(PRESETS["tiny"]), {"note": "t"})


def test_a_crafted_pickle_model_is_refused_without_running_it(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"format": "imambig.model/1", "payload": _Payload(marker)}, folder / "model.pt")
    with pytest.raises(ModelFormatError, match="pickle"):
        ckpt.load_model(Location(str(folder)))
    assert not marker.exists()
    torch.save({"payload": _Payload(marker)}, folder / "state.pt")
    with pytest.raises(ModelFormatError, match="pickle"):
        ckpt.load_state(Location(str(folder)))
    assert not marker.exists()


def test_model_round_trip_keeps_the_id(tmp_path: Path) -> None:
    folder, mid = _model(tmp_path)
    assert not (tmp_path / "model" / "model.pt").exists()
    model, info, extras = ckpt.load_model(folder, expected_id=mid)
    assert info.model_id == mid == ckpt.model_id(model.config, model.state_dict())
    assert info.metadata == {"note": "t"} and extras == {}


def test_the_model_id_is_checked_before_any_tensor_is_built(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = _model(tmp_path)
    path = Path(folder.url, ckpt.MODEL_FILE)
    data = bytearray(path.read_bytes())

    def refuse(*_a, **_k):
        raise AssertionError("tensors were deserialized before the id was checked")

    monkeypatch.setattr(safetensors.torch, "load", refuse)
    with pytest.raises(TamperedError, match="not the expected"):
        ckpt.load_model(folder, expected_id="0" * 16)
    data[-3] ^= 0x40  # one weight changed
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedError, match="do not match their model id"):
        ckpt.load_model(folder)


def test_malformed_model_files_are_clear_errors(tmp_path: Path) -> None:
    folder, _ = _model(tmp_path)
    path = Path(folder.url, ckpt.MODEL_FILE)
    good = path.read_bytes()
    (n,) = struct.unpack_from("<Q", good)
    header = json.loads(good[8 : 8 + n])
    cases = {
        "truncated": (good[:5], "truncated"),
        "huge header": (struct.pack("<Q", 1 << 40) + good[8:], "does not fit"),
        "not json": (struct.pack("<Q", 4) + b"\xff\xfe{}" + good[12:], "bad header"),
        "trailing bytes": (good + b"\0", "after the last tensor"),
    }
    wrong_format = dict(header, __metadata__={**header["__metadata__"], "format": "x/1"})
    blob = json.dumps(wrong_format).encode()
    cases["wrong format"] = (struct.pack("<Q", len(blob)) + blob + good[8 + n :],
                             "not an imambig model")
    for name, (data, message) in cases.items():
        path.write_bytes(data)
        with pytest.raises(ModelFormatError, match=message):
            ckpt.load_model(folder)
        assert name


def test_training_state_round_trips_without_pickle(tmp_path: Path) -> None:
    model = SparseAutoencoder(PRESETS["tiny"])
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 3, 32, 32))[0].mean().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "rng": {"torch": torch.get_rng_state()}, "epoch": 1, "val_psnr": [1.5, 2.25],
             "average": None, "config": {"filters": (1, 2)}}
    folder = Location(str(tmp_path / "run"))
    ckpt.save_state(folder, state)
    back = ckpt.load_state(folder)
    assert back is not None and back["epoch"] == 1 and back["val_psnr"] == [1.5, 2.25]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    opt2 = torch.optim.Adam(SparseAutoencoder(PRESETS["tiny"]).parameters())
    opt2.load_state_dict(back["optimizer"])  # integer parameter ids survive
    assert len(opt2.state) == len(opt.state) > 0


def test_own_legacy_files_convert_to_the_same_id(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = SparseAutoencoder(PRESETS["tiny"])
    state = {k: v.detach() for k, v in model.state_dict().items()}
    mid = ckpt.model_id(model.config, state)
    folder = tmp_path / "old"
    folder.mkdir()
    buf = io.BytesIO()
    torch.save({"format": "imambig.model/1", "model_id": mid, "config": model.config.to_dict(),
                "state_dict": state, "metadata": {"torch": torch.__version__}, "extras": {}}, buf)
    (folder / "model.pt").write_bytes(buf.getvalue())
    assert main(["convert-model", "--model", str(folder)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert not (folder / "model.pt").exists()
    assert ckpt.load_model(Location(str(folder)), expected_id=mid)[1].model_id == mid
    torch.save({"payload": _Payload(tmp_path / "pwned")}, folder / "model.pt")
    assert main(["convert-model", "--model", str(folder)]) == 2  # not unpickled
    assert not (tmp_path / "pwned").exists()
