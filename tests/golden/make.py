"""Regenerate ``tests/golden/encode_digests.json`` (after an intended encoding change):

    python -m tests.golden.make
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.golden import DIGESTS, encode_fixture


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        digests = encode_fixture(Path(tmp))
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(digests)} digests to {DIGESTS}")


if __name__ == "__main__":
    main()
