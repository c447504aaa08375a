"""The demo's shipped starting weights: an ordinary, verified model in float16, with
the paper's code sizes."""

from __future__ import annotations

import json
import struct

from flows.demo import demo_config
from flows.demo_weights import DEMO_WEIGHTS
from imambig.config import PRESETS, default_k_public
from imambig.model.checkpoint import load_model
from imambig.stores.location import Location


def test_demo_weights_are_a_verified_float16_model_with_the_papers_code_sizes() -> None:
    data = DEMO_WEIGHTS.read_bytes()
    assert len(data) < 8 << 20  # a few MB
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F16", "I64"} and "F16" in dtypes
    model, info, _ = load_model(Location(str(DEMO_WEIGHTS)))  # checks the content hash
    assert model.config == PRESETS["small"] == demo_config().train.model
    c = model.config
    assert (c.image_height, c.n_maps, c.code_length, c.k) == (64, 20, 512, 128)
    assert c.bottleneck_size >= c.k  # n >= k: the k real values do not pin the bottleneck
    assert demo_config().encode.k_public in (None, 2 * c.k)
    assert default_k_public(c.k) == 2 * c.k
    assert info.metadata["seed"] != 0  # not drawn from the demo's own faces (seed 0)


def test_the_demo_fine_tunes_the_shipped_weights_unless_told_otherwise() -> None:
    assert demo_config().train.init == str(DEMO_WEIGHTS)
    assert demo_config(80, scratch=True).train.init is None
