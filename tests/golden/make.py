"""Regenerate ``tests/golden/encode_digests.json`` (after an intended encoding change):

    python -m tests.golden.make          # this machine kind's entry replaces all others
    python -m tests.golden.make --add    # add this kind's entry, keep the others
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tests.golden import DIGESTS, encode_fixture, load_all, machine_kind


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--add", action="store_true",
                   help="keep other machine kinds' entries (the encoding did not change)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        digests = encode_fixture(Path(tmp))
    entries = load_all() if a.add else {}
    dropped = sorted(set(load_all()) - set(entries) - {machine_kind()})
    entries[machine_kind()] = digests
    DIGESTS.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(digests)} digests for {machine_kind()} to {DIGESTS}")
    if dropped:
        print(f"dropped stale entries: {', '.join(dropped)}")


if __name__ == "__main__":
    main()
