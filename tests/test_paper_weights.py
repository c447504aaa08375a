"""The shipped ``paper`` weights at 128x128: an ordinary, verified model in float16 with
the published id, the paper's network, and no machine paths in its metadata."""

from __future__ import annotations

import json
import struct

import pytest

from flows.paper_weights import PAPER_WEIGHTS, PAPER_WEIGHTS_ID
from imambig.config import PRESETS
from imambig.errors import TamperedError
from imambig.model.checkpoint import load_model
from imambig.stores.location import Location


def test_paper_weights_are_the_published_float16_paper_model() -> None:
    data = PAPER_WEIGHTS.read_bytes()
    assert len(data) < 7 << 20  # float16: half the float32 file
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F16", "I64"} and "F16" in dtypes
    model, info, _ = load_model(Location(str(PAPER_WEIGHTS)), expected_id=PAPER_WEIGHTS_ID)
    assert model.config == PRESETS["paper"]
    assert (model.config.image_height, model.config.image_width) == (128, 128)
    assert info.metadata["trained_from"] != PAPER_WEIGHTS_ID  # the float32 model's id
    assert len(info.metadata["val_psnr"]) > 0
    assert "/" not in json.dumps({k: v for k, v in info.metadata.items() if k != "created"})


def test_another_id_is_refused(tmp_path) -> None:
    with pytest.raises(TamperedError):
        load_model(Location(str(PAPER_WEIGHTS)), expected_id="0" * 16)
