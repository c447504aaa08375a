"""One mechanism per model: every way of publishing a model's codes again with other
fakes is refused (each of these encodes succeeded before, giving a second release whose
intersection with the first is the key)."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
from pathlib import Path

import pytest

from imambig.config import PRESETS, EncodeConfig, TrainConfig
from imambig.mechanism import noise_model
from imambig.model.checkpoint import MODEL_FILE, load_model
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.encode.release_binding import RELEASES, ReleaseRefused
from imambig.stages.train import train
from imambig.stores.location import Location

CHUNK = 100


@pytest.fixture
def setup(synthetic_store: Location, tiny_model: Location, tmp_path: Path, owner_env):
    """A private copy of the model (noise fits are written beside it) and two roots."""
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(Path(tiny_model.url) / MODEL_FILE, model / MODEL_FILE)
    roots = Location(str(tmp_path / "public")), Location(str(tmp_path / "keys"))
    return synthetic_store, Location(str(model)), roots


def _encode(setup, **cfg) -> None:
    images, model, (public, keys) = setup
    overwrite = cfg.pop("overwrite", False)
    config = EncodeConfig(region_items=CHUNK, precision=cfg.pop("precision", "fp32"), **cfg)
    job = EncodeJob(images=images, model=model, public_root=public, keys_root=keys,
                    config=config)
    run_encode(job, SerialRegions(), progress=False, overwrite=overwrite)


def test_the_same_settings_publish_again(setup) -> None:
    _encode(setup)
    _encode(setup)  # a re-run: identical bytes, allowed
    record = Path(setup[2][1].url) / RELEASES
    (body,) = [json.loads(p.read_text()) for p in record.glob("*.json")]
    assert body["k_public"] == 32 and body["precision"] == "fp32"
    assert "secret" not in json.dumps(body).lower().replace("owner_fingerprint", "")


def test_a_rotated_owner_secret_is_refused(setup, monkeypatch) -> None:
    _encode(setup)
    monkeypatch.setenv("IMAMBIG_OWNER_SECRET",
                       base64.b64encode(secrets.token_bytes(32)).decode())
    with pytest.raises(ReleaseRefused, match=r"owner_fingerprint.*new model id"):
        _encode(setup)


def test_another_k_public_is_refused(setup) -> None:
    _encode(setup)
    with pytest.raises(ReleaseRefused, match=r"k_public 32 -> 48"):
        _encode(setup, k_public=48)


def test_another_precision_is_refused(setup) -> None:
    _encode(setup)
    with pytest.raises(ReleaseRefused, match=r"precision 'fp32' -> 'bf16'"):
        _encode(setup, precision="bf16")


def test_a_refitted_noise_model_is_refused(setup) -> None:
    _encode(setup)
    _, model, _ = setup
    for f in Path(model.url).glob("noise_*.npz"):  # "delete it to refit"
        f.unlink()
    with pytest.raises(ReleaseRefused, match="noise_fit_sha256"):
        _encode(setup, noise_fit_items=100)


def test_overwrite_does_not_bypass_the_binding(setup, monkeypatch) -> None:
    _encode(setup)
    monkeypatch.setenv("IMAMBIG_OWNER_SECRET",
                       base64.b64encode(secrets.token_bytes(32)).decode())
    with pytest.raises(ReleaseRefused):
        _encode(setup, overwrite=True)


def test_a_design_bump_is_refused(setup, monkeypatch) -> None:
    _encode(setup)
    monkeypatch.setattr(noise_model, "NOISE_DESIGN", noise_model.NOISE_DESIGN + 1)
    import imambig.stages.encode.regions as er

    monkeypatch.setattr(er, "NOISE_DESIGN", noise_model.NOISE_DESIGN)
    with pytest.raises(ReleaseRefused, match="noise_design"):
        _encode(setup)


def test_a_removed_release_record_is_no_way_round(setup) -> None:
    """Versions already under the public root are checked too."""
    _encode(setup)
    _, model, (_, keys) = setup
    shutil.rmtree(Path(keys.url) / RELEASES)
    for f in Path(model.url).glob("noise_*.npz"):
        f.unlink()
    with pytest.raises(ReleaseRefused, match="version v-"):
        _encode(setup, noise_fit_items=100)


@pytest.fixture(scope="module")
def child_model(synthetic_store: Location, tiny_model: Location,
                tmp_path_factory: pytest.TempPathFactory) -> Location:
    """``tiny_model`` fine-tuned for one epoch (``imambig train --init``)."""
    out = Location(str(tmp_path_factory.mktemp("child") / "model"))
    train(synthetic_store, out,
          TrainConfig(model=PRESETS["tiny"], epochs=1, minutes=None, loss="bce", ema=0.0,
                      batch_size=32, num_threads=1,
                      init=tiny_model.url), progress=False)
    return out


def _encode_model(setup, model_dir: Location) -> None:
    images, _, (public, keys) = setup
    model = Path(setup[1].url).parent / Path(model_dir.url).parent.name
    model.mkdir(exist_ok=True)
    shutil.copy(Path(model_dir.url) / MODEL_FILE, model / MODEL_FILE)
    job = EncodeJob(images=images, model=Location(str(model)), public_root=public,
                    keys_root=keys,
                    config=EncodeConfig(region_items=CHUNK, precision="fp32"))
    run_encode(job, SerialRegions(), progress=False)


def test_the_lineage_of_a_fine_tuned_model_is_recorded(tiny_model, child_model) -> None:
    _, parent, _ = load_model(tiny_model)
    _, child, _ = load_model(child_model)
    assert child.metadata["lineage"] == [parent.model_id] != [child.model_id]


def test_a_fine_tuned_child_of_a_published_model_is_refused(setup, child_model) -> None:
    _encode(setup)  # the parent
    with pytest.raises(ReleaseRefused, match=r"fine-tuned from .*trained from scratch"):
        _encode_model(setup, child_model)


def test_the_parent_of_a_published_model_is_refused(setup, child_model) -> None:
    _encode_model(setup, child_model)
    with pytest.raises(ReleaseRefused, match=r"an ancestor of"):
        _encode(setup)


def test_a_model_trained_from_the_same_start_is_refused(setup, synthetic_store,
                                                        tmp_path) -> None:
    """Same architecture and seed, another training run (here one epoch, not two): the
    codes stay aligned with the published model's, so it is one family."""
    _encode(setup)
    sibling = Location(str(tmp_path / "sibling-run" / "model"))
    train(synthetic_store, sibling,
          TrainConfig(model=PRESETS["tiny"], epochs=1, minutes=None, loss="bce", ema=0.0,
                      batch_size=32, num_threads=1),
          progress=False)
    with pytest.raises(ReleaseRefused, match=r"same start .*new --seed"):
        _encode_model(setup, sibling)
    other_seed = Location(str(tmp_path / "other-seed" / "model"))
    train(synthetic_store, other_seed,
          TrainConfig(model=PRESETS["tiny"], epochs=1, minutes=None, loss="bce", ema=0.0,
                      batch_size=32, num_threads=1, seed=7),
          progress=False)
    _encode_model(setup, other_seed)  # a new start: allowed
