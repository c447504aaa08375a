"""Progress an operator can trust: per-worker images/s from the regions' own times, and
where each region's time went; the GPU path rehearsed on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imambig.errors import StoreFormatError
from imambig.mechanism import sorting
from imambig.stages.encode.images import StageTimes
from imambig.stages.encode.plan import RegionManifest
from imambig.stages.encode.progress import Throughput
from tests.golden import mechanism as M


def _region(worker: str, start: float, finish: float, items: int = 100) -> RegionManifest:
    return RegionManifest(0, items, items, "x", finish - start, start, finish, worker=worker,
                          stages={"forward": 1.0, "mechanism": 0.5, "write": 0.25})


def test_rates_per_worker_over_the_run_and_the_last_minute() -> None:
    t = Throughput()
    # worker a: 100 items every 10 s from t=0 to t=120; worker b: one region, long ago
    for i in range(12):
        t.add(_region("a", 10.0 * i, 10.0 * (i + 1)))
    t.add(_region("b", 0.0, 50.0, items=500))
    t.add(RegionManifest(0, 100, 100, "x", 0.0, 0.0, 0.0, skipped=True, worker="c"))
    a, b = t.workers(now=120.0)
    assert (a.worker, a.items, b.worker, b.items) == ("a", 1200, "b", 500)
    assert a.overall == pytest.approx(10.0) and a.recent == pytest.approx(10.0)
    assert b.overall == pytest.approx(500 / 120) and b.recent == 0.0  # idle this minute
    overall, recent = t.total(now=120.0)
    assert overall == pytest.approx(1700 / 120) and recent == pytest.approx(600 / 60)
    assert t.stages().forward == pytest.approx(13.0)
    assert "10.0 img/s last min" in t.postfix(now=120.0)
    table = t.markdown(now=120.0)
    assert "| a | 1,200 | 10.0 | 10.0 |" in table and "| forward | 13.0 |" in table


def test_old_markers_without_times_still_parse_and_bad_times_do_not() -> None:
    raw = b'{"start": 0, "stop": 64, "items": 64, "public_sha256": "ab", "seconds": 1.5}'
    m = RegionManifest.from_json(raw, "m")
    assert m.times == StageTimes() and m.worker == ""
    again = RegionManifest.from_json(json.dumps(_region("w", 1.0, 2.0).to_dict()).encode(), "m")
    assert again.times.forward == 1.0 and again.worker == "w"
    for stages in ({"forward": -1.0}, {"forward": "1"}, {"elsewhere": 1.0}, [1.0],
                   {"forward": float("nan")}):
        doc = {**json.loads(raw), "stages": stages}
        with pytest.raises(StoreFormatError, match="stages is malformed"):
            RegionManifest.from_json(json.dumps(doc).encode(), "m")


def test_the_gpu_paths_kernels_give_the_same_records(tmp_path: Path) -> None:
    """The GPU path (torch's selection and sorting kernels instead of numpy's) run on
    the CPU: the same bytes as the stored golden digests."""
    setting, tensors, noise = M.load()
    want = setting.pop("digests")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with sorting.torch_kernels():
            got = M.digests(setting, tensors, noise, tmp_path)
    finally:
        torch.set_num_threads(before)
    assert got == want


def test_torch_kernels_select_like_numpys_with_ties() -> None:
    from imambig.mechanism.noise_model import top_positions

    x = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.5]])
    with sorting.torch_kernels():
        on_torch = top_positions(x, 3)
    assert on_torch.tolist() == top_positions(x, 3).tolist() == [[0, 2, 3]]
