"""Regenerate the golden files (after an intended change of what encoding writes):

    python -m tests.golden.make            # this kind's encode digests replace all
                                           # others; the mechanism digests are redone
    python -m tests.golden.make --add      # add this kind's encode digests, keep the
                                           # others (the encoding did not change)
    python -m tests.golden.make --inputs   # also rebuild the mechanism's stored inputs
                                           # (bottlenecks, weights, noise fit) from this
                                           # machine's golden encoding
    python -m tests.golden.make --compare KIND [--precision fp32]
                                           # write nothing: which files this machine's
                                           # encoding changes against KIND's

The mechanism digests (``mechanism.json``) are the same on every machine; they are
recomputed from the stored inputs, which change only with ``--inputs`` (a new preset,
noise design or fixture), after checking that they reproduce this machine's encoding
byte for byte.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch

from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.config import preset_name
from imambig.model.checkpoint import load_model
from imambig.stages.encode.images import bottlenecks
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from tests.golden import DIGESTS, encode_fixture, load_all, machine_kind
from tests.golden import mechanism as M


def mechanism_inputs(workdir: Path) -> tuple[dict, dict[str, np.ndarray], bytes]:
    """The mechanism's inputs as the golden encoding under ``workdir`` met them."""
    version = json.loads((workdir / "keys" / "current.json").read_text())["version"]
    public = PublicStore.open(Location(str(workdir / "public" / version)))
    model, _, _ = load_model(Location(str(workdir / "model")))
    images = open_image_store(Location(str(workdir / "images")))
    precision = public.attrs["noise_fit"]["precision"]
    torch.set_num_threads(1)  # as the encoding ran (tests/golden/__init__.py)
    h = bottlenecks(model, images.read(slice(None)), precision)
    setting = {
        "preset": preset_name(model.config), "precision": precision, "version": version,
        "store_id": public.attrs["store_id"], "chunk_items": public.chunk_items,
        "names": [str(n) for n in images.item_ids()], "made_on": machine_kind(),
    }
    tensors = {"bottlenecks": h.numpy(),
               "linear_weight": model.linear.weight.detach().float().numpy()}
    return setting, tensors, (workdir / "model" / public.attrs["noise_fit"]["file"]).read_bytes()


def check_reproduces(workdir: Path, setting: dict, digests: dict[str, list[str]]) -> None:
    """Refuse inputs whose records, keys and keystore rows differ from the encoding's."""
    version = setting["version"]
    public = PublicStore.open(Location(str(workdir / "public" / version)))
    mask, values = public.read(slice(None))
    ks = Keystore.open(Location(str(workdir / "keys" / version)), LocalKeyProvider(M.KEYSTORE_KEY))
    stored = {
        "records": [M._sha(M.record_bytes(m, v)) for m, v in zip(mask, values, strict=True)],
        "keys": [M._sha(k) for k in ks.keys(np.arange(len(mask)))],
        "keystore_rows": [M._sha(p.read_bytes()) for p in sorted(
            (workdir / "keys" / version / "sealed" / "c").glob("*/0"),
            key=lambda p: int(p.parent.name))],
    }
    for name, want in stored.items():
        if digests[name] != want:
            raise SystemExit(f"the stored bottlenecks do not reproduce the encoding's {name}; "
                             "nothing written")


def compare(kind: str, precision: str | None) -> None:
    """Print which stored files this machine's encoding (at ``precision``, default
    ``auto``) changes against ``kind``'s."""
    want = load_all().get(kind)
    if want is None:
        raise SystemExit(f"no entry for {kind}; the entries: {', '.join(load_all())}")
    with tempfile.TemporaryDirectory() as tmp:
        got = encode_fixture(Path(tmp), precision)
    changed = sorted(name for name in want if got.get(name) != want[name])
    print(f"{machine_kind()} against {kind}: {len(changed)} of {len(want)} files differ")
    for name in changed:
        print(f"  {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--add", action="store_true",
                   help="keep other machine kinds' entries (the encoding did not change)")
    p.add_argument("--inputs", action="store_true",
                   help="rebuild the mechanism's stored inputs from this machine's encoding")
    p.add_argument("--compare", metavar="KIND",
                   help="write nothing; list the files that differ from KIND's entry")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="with --compare: encode at this precision instead of auto")
    a = p.parse_args()
    if a.compare:
        compare(a.compare, a.precision)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        digests = encode_fixture(work / "encode")
        if a.inputs:
            setting, tensors, noise = mechanism_inputs(work / "encode")
        else:
            setting, tensors, noise = M.load()
            setting = {k: v for k, v in setting.items() if k != "digests"}
        mechanism = M.digests(setting, tensors, noise, work / "mechanism")
        if a.inputs:
            check_reproduces(work / "encode", setting, mechanism)
            M.TENSORS.write_bytes(safetensors.numpy.save(tensors))
            M.NOISE.write_bytes(noise)
        if a.inputs or not a.add:
            M.DIGESTS.write_text(json.dumps({**setting, "digests": mechanism}, indent=1) + "\n")
            print(f"wrote the mechanism digests of {len(setting['names'])} items to {M.DIGESTS}")
    entries = load_all() if a.add else {}
    dropped = sorted(set(load_all()) - set(entries) - {machine_kind()})
    entries[machine_kind()] = digests
    DIGESTS.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(digests)} digests for {machine_kind()} to {DIGESTS}")
    if dropped:
        print(f"dropped stale entries: {', '.join(dropped)}")


if __name__ == "__main__":
    main()
