"""The noise fit is the owner's own: bound to the owner when it is made, and a refused
encode leaves nothing behind (each of these encodes used a planted or swapped fit, or
wrote a noise file while refusing, before fits were bound)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from imambig.config import EncodeConfig
from imambig.errors import TamperedError
from imambig.mechanism.noise_model import NOISE_DESIGN, fit_noise_model
from imambig.model.checkpoint import MODEL_FILE, load_model
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeContext, EncodeJob
from imambig.stages.encode.release_binding import ReleaseRefused
from imambig.stages.versions import lease_location
from imambig.stores.image_store import open_image_store
from imambig.stores.lease import Lease, LeaseHeld
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore

CHUNK = 100


@pytest.fixture
def model(tiny_model: Location, tmp_path: Path) -> Location:
    """A private copy of the model folder (fits are written beside the model)."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(Path(tiny_model.url) / MODEL_FILE, folder / MODEL_FILE)
    return Location(str(folder))


@pytest.fixture(scope="module")
def stranger_fit(synthetic_store: Location, tiny_model: Location) -> bytes:
    """A well-formed fit of the same model and settings that the owner did not make
    (on other images): what a writer of the model folder could plant."""
    torch.set_num_threads(1)
    net, info, _ = load_model(tiny_model)
    store = open_image_store(synthetic_store)
    idx = store.indices("test")
    return fit_noise_model(net, info.model_id, [to_tensor(store.read(idx))], 2 * net.config.k,
                           precision="fp32").to_bytes()


def _job(images: Location, model: Location, tmp_path: Path, roots: str = "a",
         **cfg: object) -> EncodeJob:
    return EncodeJob(images=images, model=model,
                     public_root=Location(str(tmp_path / roots / "public")),
                     keys_root=Location(str(tmp_path / roots / "keys")),
                     config=EncodeConfig(region_items=CHUNK, precision="fp32", **cfg))


def _published_fit(job: EncodeJob) -> dict:
    report = run_encode(job, SerialRegions(), progress=False)
    return PublicStore.open(report.plan.public).attrs["noise_fit"]


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, files with their digests."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "folder" for p in sorted(root.rglob("*"))}


def test_a_fit_planted_before_the_first_publication_is_not_used(
        synthetic_store, model, tmp_path, owner_env, stranger_fit) -> None:
    planted = Path(model.url) / f"noise_d{NOISE_DESIGN}_k32_fp32.npz"  # the name fits had
    planted.write_bytes(stranger_fit)
    fit = _published_fit(_job(synthetic_store, model, tmp_path))
    assert fit["sha256"] != hashlib.sha256(stranger_fit).hexdigest()
    assert fit["file"] != planted.name  # the owner's own fit, named for the owner
    assert (Path(model.url) / fit["file"]).exists()


def test_a_fit_swapped_before_the_first_publication_is_refused(
        synthetic_store, model, tmp_path, owner_env, stranger_fit) -> None:
    _published_fit(_job(synthetic_store, model, tmp_path, "a"))  # fits; model not yet in "b"
    (fit,) = Path(model.url).glob("noise_*.npz")
    fit.write_bytes(stranger_fit)
    before = _tree(tmp_path)
    with pytest.raises(TamperedError, match="not the one its owner fitted"):
        run_encode(_job(synthetic_store, model, tmp_path, "b"), SerialRegions(), progress=False)
    assert _tree(tmp_path) == before  # nothing published, nothing recorded


def test_a_fit_of_another_owner_is_not_used(synthetic_store, model, tmp_path, owner_env,
                                            monkeypatch) -> None:
    first = _published_fit(_job(synthetic_store, model, tmp_path, "a"))
    monkeypatch.setenv("IMAMBIG_OWNER_SECRET", "c2Vjb25kIG93bmVyIG9mIHRoaXMgbW9kZWwgZm9sZGVy")
    second = _published_fit(_job(synthetic_store, model, tmp_path, "b"))
    assert second["file"] != first["file"]  # each owner fits (and binds) their own
    assert all((Path(model.url) / f["file"]).exists() for f in (first, second))


def test_a_fit_released_before_fits_were_bound_is_adopted(synthetic_store, model, tmp_path,
                                                          owner_env) -> None:
    """A store published with a fit of the earlier name (no owner, no record) can still be
    encoded again: the release record names that fit's digest."""
    first = _published_fit(_job(synthetic_store, model, tmp_path))
    folder = Path(model.url)
    (folder / first["file"]).rename(folder / f"noise_d{NOISE_DESIGN}_k32_fp32.npz")
    for record in folder.glob("*.fit.json"):
        record.unlink()
    again = _published_fit(_job(synthetic_store, model, tmp_path))
    assert again == first


def _foreign_store(job: EncodeJob) -> None:
    """A public store of other settings where this job's version goes."""
    version = EncodeContext.open(job).version
    PublicStore.create(job.public_root.join(version), store_id="cd" * 16, version=version,
                       n_items=3, chunk_items=3, n_maps=8, code_length=64, k=16, k_public=32,
                       model_id=version[2:18], image_size=(32, 32),
                       noise_fit={"file": "noise.npz", "sha256": "0" * 64})


@pytest.mark.parametrize("refusal", ["another k'", "a store built otherwise", "lease held"])
def test_a_refused_encode_writes_nothing(synthetic_store, model, tmp_path, owner_env,
                                         refusal) -> None:
    job = _job(synthetic_store, model, tmp_path)
    holder = None
    if refusal == "another k'":
        _published_fit(job)
        job, error = _job(synthetic_store, model, tmp_path, k_public=48), ReleaseRefused
    elif refusal == "a store built otherwise":
        _foreign_store(job)
        error = ValueError
    else:
        holder = Lease(lease_location(job.keys_root, EncodeContext.open(job).version)).acquire()
        error = LeaseHeld
    before = _tree(tmp_path)
    try:
        with pytest.raises(error):
            run_encode(job, SerialRegions(), progress=False)
        assert _tree(tmp_path) == before
    finally:
        if holder is not None:
            holder.release()
