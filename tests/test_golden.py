"""Encoding a fixed fixture writes exactly the committed bytes (``tests/golden``).

A failure means the encoding changed. If that was intended, regenerate the digests with
``python -m tests.golden.make`` and commit them with the change.
"""

from __future__ import annotations

from pathlib import Path

from tests.golden import encode_fixture, load_digests


def test_encoding_matches_the_golden_digests(tmp_path: Path) -> None:
    got = encode_fixture(tmp_path)
    want = load_digests()
    assert sorted(got) == sorted(want), "other files were written"
    changed = sorted(name for name in want if got[name] != want[name])
    assert not changed, f"{len(changed)} stored files changed, e.g. {changed[:5]}"
