"""Encoding a fixed fixture writes exactly the committed bytes (``tests/golden``).

A failure means the encoding changed. If that was intended, regenerate the digests with
``python -m tests.golden.make`` and commit them with the change. Digests are per machine
kind (``tests/golden/__init__.py`` says why).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden import encode_fixture, load_digests, machine_kind


def test_encoding_matches_the_golden_digests(tmp_path: Path) -> None:
    want = load_digests()
    if want is None:
        pytest.skip(f"no golden digests for this machine kind ({machine_kind()}): its float "
                    "kernels round differently; add them with python -m tests.golden.make --add")
    got = encode_fixture(tmp_path)
    assert sorted(got) == sorted(want), "other files were written"
    changed = sorted(name for name in want if got[name] != want[name])
    assert not changed, f"{len(changed)} stored files changed, e.g. {changed[:5]}"
