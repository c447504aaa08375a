"""Lower-fidelity grants reveal their k_low entries per map and nothing more: no byte of
a grant unseals the record, grants at several fidelities nest, and the same photo filed
under two names reveals no more than one grant of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imambig.access.grant import GrantError, open_grant
from imambig.access.identity import new_identity
from imambig.access.key_provider import LocalKeyProvider
from imambig.access.keystore import Keystore
from imambig.access.owner_key import public_text, signing_key
from imambig.access.secrets import Secrets
from imambig.config import EncodeConfig, IngestConfig
from imambig.errors import KeyFormatError
from imambig.mechanism import grant_entries as G
from imambig.mechanism.keys import decode_keys, key_seals
from imambig.mechanism.quantizer import quantize
from imambig.mechanism.record import Ambiguated
from imambig.mechanism.seal import SEAL_BYTES
from imambig.model.checkpoint import load_model
from imambig.stages.encode.driver import SerialRegions, run_encode
from imambig.stages.encode.plan import EncodeJob
from imambig.stages.ingest import ingest
from imambig.stages.share import issue_grant, reveal
from imambig.stores.image_store import open_image_store
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from tests.fixtures_model import make_synthetic_images

N_ITEMS = 64


def _provider() -> LocalKeyProvider:
    return LocalKeyProvider.from_secrets(Secrets())


def _signer():
    return signing_key(Secrets().signing_key)


@pytest.fixture(scope="module")
def twins(tiny_model, tmp_path_factory, module_owner_env):
    """A collection in which photo 0000.png is filed a second time as zz-copy.png,
    encoded: (job, plan)."""
    root = tmp_path_factory.mktemp("twins")
    make_synthetic_images(root / "src", N_ITEMS, seed=3)
    shutil.copyfile(root / "src" / "0000.png", root / "src" / "zz-copy.png")
    images = Location(str(root / "images"))
    ingest(Location(str(root / "src")), images,
           IngestConfig(height=32, width=32, split="random:0.8", workers=1))
    job = EncodeJob(images=images, model=tiny_model, public_root=Location(str(root / "pub")),
                    keys_root=Location(str(root / "keys")),
                    config=EncodeConfig(region_items=32))
    return job, run_encode(job, SerialRegions(), progress=False).plan


def _names(job: EncodeJob) -> list[str]:
    return [str(i) for i in open_image_store(job.images).item_ids()]


def _grant(job: EncodeJob, names: list[str], k_low: int | None) -> tuple[list[bytes], bytes]:
    """The keys a grant carries, and the grant itself, opened by its recipient."""
    alice = new_identity()
    blob = issue_grant(job.public_root, job.keys_root, names, alice.public_text(),
                       _provider(), _signer(), k_low=k_low)
    grant = open_grant(blob, alice, public_text(_signer()))
    return [grant.keys[n] for n in names], blob


def _truth(plan, names: list[str]) -> tuple[Ambiguated, np.ndarray, np.ndarray]:
    """The sealed records of the items ``names`` with their full keys, and the true
    support (B, L, m) and dense true values of the records underneath."""
    store, ks = PublicStore.open(plan.public), Keystore.open(plan.keystore, _provider())
    idx = store.index_of(ks.opaque_ids(names), names=names)
    mask, values = store.read(idx)
    keys = ks.keys(idx)
    sealed = Ambiguated(mask, values, decode_keys(keys), key_seals(keys))
    opened = sealed.opened()
    real = np.zeros(opened.mask.shape, bool)
    dense = np.zeros(opened.mask.shape, np.float16)
    real[opened.mask] = opened.real.ravel()
    dense[opened.mask] = opened.values.ravel()
    return sealed, real, dense


def test_a_grant_holds_exactly_its_entries_and_grants_nest(twins) -> None:
    job, plan = twins
    names = _names(job)[:40]
    _, real, dense = _truth(plan, names)
    k = int(real[0, 0].sum())
    low_keys, _ = _grant(job, names, k // 4)
    half_keys, _ = _grant(job, names, k // 2)
    low, _ = G.decode_entries_keys(low_keys)
    half, half_values = G.decode_entries_keys(half_keys)
    assert (half.sum(-1) == k // 2).all() and (low.sum(-1) == k // 4).all()
    assert (half <= real).all(), "a grant reveals real entries only"
    np.testing.assert_array_equal(half_values.view(np.uint16),
                                  dense[half].reshape(half_values.shape).view(np.uint16))
    assert (low <= half).all(), "grants at several k_low nest: together no more than the largest"
    # The subset is the secret order's, not the magnitudes': revealed entries sit at
    # every magnitude rank among the real ones, about half of them above the median.
    magnitude = np.where(real, np.abs(dense.astype(np.float32)), np.nan)
    median = np.nanmedian(magnitude, axis=-1, keepdims=True)
    above = (np.abs(dense.astype(np.float32)) > median)[half].mean()
    assert 0.4 < above < 0.6, above


def test_no_byte_of_a_lower_fidelity_grant_unseals_the_record(twins) -> None:
    """Every 16-byte window of the grant item's key, and of the whole sealed grant, is
    tried as the record's seal: none opens it. (A grant that carried the record's seal,
    as k_low keys once did, fails here: its seal opens all k' entries of every map.)"""
    job, plan = twins
    names = _names(job)[:4]
    sealed, real, _ = _truth(plan, names)
    k = int(real[0, 0].sum())
    keys, blob = _grant(job, names, k // 2)
    assert sealed.seals is not None
    for i, key in enumerate(keys):
        with pytest.raises(KeyFormatError):
            key_seals([key])  # not a support key: it carries no seal
        truth = sealed.seals[i].tobytes()
        material = key + blob
        windows = {material[o : o + SEAL_BYTES] for o in range(len(material) - SEAL_BYTES + 1)}
        assert truth not in windows
        one = sealed.items(slice(i, i + 1))
        opened_true = one.opened().mask
        for w in list(windows)[:300]:
            tried = Ambiguated(one.mask, one.values, one.real,
                               np.frombuffer(w, np.uint8)[None].copy())
            assert not np.array_equal(tried.opened().mask, opened_true)


def test_the_full_key_still_carries_the_seal(twins) -> None:
    job, _ = twins
    names = _names(job)[:2]
    keys, _ = _grant(job, names, None)
    assert key_seals(keys) is not None


def test_one_photo_under_two_names_reveals_no_more_than_one_grant(twins) -> None:
    job, _ = twins
    names = _names(job)
    first = next(n for n in names if n.endswith("0000.png"))
    copy = next(n for n in names if n.endswith("zz-copy.png"))
    k = int(load_model(job.model)[0].config.k)
    (a,), _ = _grant(job, [first], k // 2)
    (b,), _ = _grant(job, [copy], k // 2)
    ma, _ = G.decode_entries_keys([a])
    mb, _ = G.decode_entries_keys([b])
    assert ((ma | mb).sum() == ma.sum()), "the two names' grants reveal the same entries"
    assert a == b


def test_reveal_decodes_a_lower_fidelity_grant_without_the_record(twins, tmp_path: Path
                                                                   ) -> None:
    job, _ = twins
    names = _names(job)[:3]
    alice = new_identity()
    k = int(load_model(job.model)[0].config.k)
    blob = issue_grant(job.public_root, job.keys_root, names, alice.public_text(),
                       _provider(), _signer(), k_low=k // 2)
    out = reveal(blob, alice, public_text(_signer()), job.model)
    model = load_model(job.model)[0]
    mask, values = G.decode_entries_keys(
        list(open_grant(blob, alice, public_text(_signer())).keys.values()))
    with torch.no_grad():
        expected = model.decode(G.entries_code(mask, values))
    got = torch.from_numpy(out.images).permute(0, 3, 1, 2).float() / 255
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6


def test_entries_keys_round_trip_and_refuse_malformed_bytes() -> None:
    rng = np.random.default_rng(0)
    B, L, m, k_low = 3, 20, 512, 32
    mask = np.zeros((B, L, m), bool)
    for b in range(B):
        for row in range(L):
            mask[b, row, rng.choice(m, k_low, replace=False)] = True
    values = quantize(torch.randn(B, L, k_low)).numpy()
    keys = G.encode_entries_keys(mask, values)
    assert {len(x) for x in keys} == {G.entries_key_bytes(L, m, k_low)}
    got_mask, got_values = G.decode_entries_keys(keys, n_maps=L, code_length=m)
    np.testing.assert_array_equal(got_mask, mask)
    np.testing.assert_array_equal(got_values.view(np.uint16), values.view(np.uint16))
    key = keys[0]
    for bad, match in ((key[:-1], "bytes"), (b"\x02" + key[1:], "version"),
                       (key[:7] + b"\xff" * (len(key) - 7), "range"),
                       (key[:1] + b"\xff\xff" + key[3:], "header|bytes")):
        with pytest.raises(KeyFormatError, match=match):
            G.decode_entries_keys([bad])
    with pytest.raises(KeyFormatError, match="m=512"):
        G.decode_entries_keys([key], n_maps=L, code_length=64)


def test_the_revealed_subset_is_a_function_of_the_record() -> None:
    """Same seal -> same order; another seal -> another order."""
    a = G.grant_order(bytes(16), 4, 64)
    np.testing.assert_array_equal(a, G.grant_order(bytes(16), 4, 64))
    assert not np.array_equal(a, G.grant_order(b"\x01" + bytes(15), 4, 64))
    real = np.zeros((4, 64), bool)
    real[:, :16] = True
    chosen = G.choose_revealed(real, a, 8)
    assert (chosen.sum(-1) == 8).all() and (chosen <= real).all()
    assert (chosen <= G.choose_revealed(real, a, 12)).all()


def test_a_grant_names_the_grant_decoder_and_reveal_uses_only_that_one(
        twins, tmp_path: Path) -> None:
    """The owner's grant decoder is published beside the model; a lower-fidelity grant
    names its id and reveal decodes with it, refusing any other file in its place."""
    from imambig.config import GrantDecoderConfig
    from imambig.stages.grant_decoder import find_grant_decoder, train_grant_decoder

    job, _ = twins
    model = Location(str(tmp_path / "model"))
    shutil.copytree(job.model.url, model.url)
    net, info, _ = load_model(model)
    assert find_grant_decoder(model, info.model_id) is None
    summary = train_grant_decoder(model, job.images, GrantDecoderConfig(epochs=2,
                                                                        num_threads=1))
    decoder, decoder_id = find_grant_decoder(model, info.model_id)
    assert decoder_id == summary["model_id"] != info.model_id
    k = net.config.k
    # trained on partial codes, it decodes them better than the model's own decoder
    half = summary["val_psnr"][str(k // 2)]
    assert half["grant decoder"] > half["model decoder"]

    names = _names(job)[:3]
    alice = new_identity()
    blob = issue_grant(job.public_root, job.keys_root, names, alice.public_text(),
                       _provider(), _signer(), k_low=k // 2, model=model)
    grant = open_grant(blob, alice, public_text(_signer()))
    assert grant.decoder_id == decoder_id
    out = reveal(blob, alice, public_text(_signer()), model)
    mask, values = G.decode_entries_keys(list(grant.keys.values()))
    with torch.no_grad():
        expected = decoder.decode(G.entries_code(mask, values))
    got = torch.from_numpy(out.images).permute(0, 3, 1, 2).float() / 255
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6

    # one made for k/2 alone: new k/2 grants name it, other fidelities keep the general
    # one, and the grant issued before still reveals with the decoder it names
    special = train_grant_decoder(model, job.images, GrantDecoderConfig(
        epochs=1, num_threads=1, k_low=k // 2))
    assert special["model_id"] not in (decoder_id, info.model_id)
    assert special["where"].endswith(f"grant-decoder/k_low-{k // 2}")
    half_blob = issue_grant(job.public_root, job.keys_root, names, alice.public_text(),
                            _provider(), _signer(), k_low=k // 2, model=model)
    quarter_blob = issue_grant(job.public_root, job.keys_root, names, alice.public_text(),
                               _provider(), _signer(), k_low=k // 4, model=model)
    assert open_grant(half_blob, alice, public_text(_signer())).decoder_id == special["model_id"]
    assert open_grant(quarter_blob, alice, public_text(_signer())).decoder_id == decoder_id
    np.testing.assert_array_equal(reveal(blob, alice, public_text(_signer()), model).images,
                                  out.images)
    special_out = reveal(half_blob, alice, public_text(_signer()), model).images
    assert not np.array_equal(special_out, out.images)

    # another decoder put in its place (here: the model itself) is refused
    shutil.copyfile(Path(model.url) / "model.safetensors",
                    Path(model.url) / "grant-decoder" / "model.safetensors")
    with pytest.raises(GrantError, match=f"grant decoder {decoder_id}"):
        reveal(blob, alice, public_text(_signer()), model)
    # and a decoder made for another model is refused when the owner issues a grant
    with pytest.raises(ValueError, match="grant decoder of another model"):
        issue_grant(job.public_root, job.keys_root, names, alice.public_text(),
                    _provider(), _signer(), k_low=k // 4, model=model)


def test_k_public_equal_to_k_publishes_no_fakes_and_a_seal_only_key(twins, tmp_path) -> None:
    """k' = k is a knob: records of the real entries alone, sealed; the full key is the
    header and the seal (no support to name), and reveal still decodes the image."""
    from imambig.mechanism.keys import HEADER_BYTES

    job, _ = twins
    k = int(load_model(job.model)[0].config.k)
    lean = EncodeJob(images=job.images, model=job.model,
                     public_root=Location(str(tmp_path / "pub")),
                     keys_root=Location(str(tmp_path / "keys")),
                     config=EncodeConfig(region_items=32, k_public=k))
    plan = run_encode(lean, SerialRegions(), progress=False).plan
    names = _names(job)[:3]
    keys, blob = _grant(lean, names, None)
    assert {len(x) for x in keys} == {HEADER_BYTES + SEAL_BYTES}
    sealed, real, _ = _truth(plan, names)
    assert sealed.real.all() and (real.sum(-1) == k).all()
    alice = new_identity()
    blob = issue_grant(lean.public_root, lean.keys_root, names, alice.public_text(),
                       _provider(), _signer())
    out = reveal(blob, alice, public_text(_signer()), job.model)
    with torch.no_grad():
        expected = load_model(job.model)[0].decode(sealed.authorized_code())
    got = torch.from_numpy(out.images).permute(0, 3, 1, 2).float() / 255
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6
