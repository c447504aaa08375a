"""Ambiguation: exact sizes, the authorized code, determinism, records that depend on
the image alone (not its item id), and fakes that move with the code between
near-duplicates; nothing public leaks which entries are real."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from imambig.access.secrets import Secret
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.keys import decode_keys, key_bytes
from imambig.mechanism.noise_model import NoiseModel
from imambig.mechanism.quantizer import VALUE_BITS, quantize, round_mantissa
from imambig.model.layers.topk import topk_sparsify
from imambig.stages.encode.images import bottlenecks, encode_images
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location
from imambig.study.near_duplicates import transform

SECRET = Secret(b"s" * 32)
OTHER = Secret(b"o" * 32)


@pytest.fixture(scope="module")
def setup(tiny_mechanism):
    model, noise, images = tiny_mechanism
    return model, noise, DecoyMap.for_owner(noise, SECRET), images[:24]


def test_sizes_and_real_support(setup) -> None:
    model, noise, decoys, images = setup
    c = model.config
    with torch.no_grad():
        amb = ambiguate(model, bottlenecks(model, images), noise, decoys, sealed=False)
        z = model.encode(to_tensor(images))
    assert (amb.mask.sum(-1) == 2 * c.k).all()
    assert (amb.real.sum(-1) == c.k).all()
    assert amb.values.dtype == np.float16 and (amb.values != 0).all()
    # the real entries sit exactly on the top-k support
    real_mask = np.zeros_like(amb.mask)
    real_mask[amb.mask] = amb.real.ravel()
    assert np.array_equal(real_mask, (z != 0).numpy())


def test_public_values_keep_value_bits_mantissa_bits(setup) -> None:
    model, noise, decoys, images = setup
    amb = ambiguate(model, bottlenecks(model, images), noise, decoys)
    assert np.array_equal(amb.values, round_mantissa(amb.values, VALUE_BITS))
    assert not np.array_equal(amb.values, round_mantissa(amb.values, VALUE_BITS - 1))


def test_authorized_code_is_the_quantized_topk_code(setup) -> None:
    model, noise, decoys, images = setup
    with torch.no_grad():
        h = bottlenecks(model, images)
        amb = ambiguate(model, h, noise, decoys)
        expected = quantize(topk_sparsify(model.linear(h), model.config.k)).float()
        assert torch.equal(amb.authorized_code(), expected)
        assert torch.equal(model.decode(amb.authorized_code()), model.decode(expected))


def test_same_pixels_same_bytes_other_secret_other_fakes(setup) -> None:
    model, noise, decoys, images = setup
    a = encode_images(model, noise, decoys, images)
    b = encode_images(model, noise, DecoyMap.for_owner(noise, SECRET), images)
    assert np.array_equal(a.mask, b.mask) and a.values.tobytes() == b.values.tobytes()
    assert a.keys == b.keys
    c = encode_images(model, noise, DecoyMap.for_owner(noise, OTHER), images)
    assert not np.array_equal(a.mask, c.mask)
    # under the seal, the real part is the same: only the fakes depend on the secret
    h = bottlenecks(model, images)
    oa = ambiguate(model, h, noise, decoys, sealed=False)
    oc = ambiguate(model, h, noise, DecoyMap.for_owner(noise, OTHER), sealed=False)
    assert np.array_equal(oa.values[oa.real], oc.values[oc.real])


def test_a_duplicate_anywhere_in_a_batch_gets_the_identical_record(setup) -> None:
    """The same photo twice (another item id, another place in the collection) publishes
    one record twice: nothing to intersect. Item ids used to seed the fakes."""
    model, noise, decoys, images = setup
    batch = np.concatenate([images[:9], images[3:4], images[9:]])  # item 3 again, at 9
    enc = encode_images(model, noise, decoys, batch)
    assert np.array_equal(enc.mask[3], enc.mask[9])
    assert enc.values[3].tobytes() == enc.values[9].tobytes()
    assert enc.keys[3] == enc.keys[9]


def test_item_encoded_alone_equals_item_in_a_batch(setup) -> None:
    model, noise, decoys, images = setup
    bulk = encode_images(model, noise, decoys, images)
    for i in (0, 5, 13, 23):
        alone = encode_images(model, noise, decoys, images[i : i + 1])
        assert np.array_equal(alone.mask[0], bulk.mask[i])
        assert alone.values[0].tobytes() == bulk.values[i].tobytes()
        assert alone.keys[0] == bulk.keys[i]


def _jpeg90(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return np.asarray(Image.open(io.BytesIO(transform(buf.getvalue(), "jpeg90"))).convert("RGB"))


def test_fakes_of_a_near_duplicate_move_no_more_than_the_real_entries(setup) -> None:
    """Under the seal, a re-saved copy keeps (almost) all its fakes where they were, as
    its real entries stay: with fakes drawn afresh per item id the copy kept none of
    them. (What a seal holder, e.g. a lower-fidelity grantee, compares.)"""
    model, noise, decoys, images = setup
    a = ambiguate(model, bottlenecks(model, images), noise, decoys, sealed=False)
    copy = np.stack([_jpeg90(im) for im in images])
    b = ambiguate(model, bottlenecks(model, copy), noise, decoys, sealed=False)
    real_a, real_b = np.zeros_like(a.mask), np.zeros_like(b.mask)
    real_a[a.mask], real_b[b.mask] = a.real.ravel(), b.real.ravel()
    fake_a = a.mask & ~real_a
    kept_real = (real_a & b.mask).sum() / real_a.sum()
    kept_fake = (fake_a & b.mask).sum() / fake_a.sum()
    assert kept_real > 0.9
    assert kept_fake > kept_real - 0.05, (kept_real, kept_fake)


def test_decoy_map_depends_on_secret_and_model(setup) -> None:
    model, noise, decoys, images = setup
    h = bottlenecks(model, images[:4])
    again = DecoyMap.for_owner(noise, SECRET)
    assert torch.equal(decoys.decoy(h), again.decoy(h))
    assert torch.equal(decoys.projections(h), again.projections(h))
    other_model = NoiseModel(**{**noise.__dict__, "model_id": "another-model"})
    for other in (DecoyMap.for_owner(noise, OTHER), DecoyMap.for_owner(other_model, SECRET)):
        assert not torch.allclose(decoys.decoy(h), other.decoy(h))
    # projections are spread alike for every item, whatever its distance from the mean
    p = decoys.projections(h)
    spread = p.flatten(1).std(1)
    assert torch.allclose(spread, torch.ones_like(spread), atol=0.1), spread


def test_keys_decode_to_the_real_entries(setup) -> None:
    model, noise, decoys, images = setup
    enc = encode_images(model, noise, decoys, images)
    c = model.config
    assert all(len(k) == key_bytes(c.n_maps, 2 * c.k, c.k) for k in enc.keys)
    amb = ambiguate(model, bottlenecks(model, images), noise, decoys)
    assert np.array_equal(decode_keys(enc.keys), amb.real)


def test_noise_model_round_trip(setup, tmp_path) -> None:
    _, noise, _, _ = setup
    url = str(tmp_path / "noise.npz")
    noise.save(Location(url))
    back = NoiseModel.load(Location(url))
    assert back.model_id == noise.model_id and back.k_public == noise.k_public
    assert np.array_equal(back.components, noise.components)
    # a file from another noise design is refused by name, not with a KeyError
    with np.load(url) as z:
        old = {k: z[k] for k in z.files if k != "projection_cdf"}
    old_url = tmp_path / "old.npz"
    np.savez(old_url, **old)
    with pytest.raises(ValueError, match=r"old\.npz.*projection_cdf.*another noise design"):
        NoiseModel.load(Location(str(old_url)))


def test_records_do_not_depend_on_how_many_items_are_ambiguated_together(
        tiny_mechanism, monkeypatch: pytest.MonkeyPatch) -> None:
    # encode_images ambiguates in groups (MECHANISM_ITEMS) to bound memory; a region's
    # records must be those of one call over all its items.
    import imambig.stages.encode.images as encode_module

    model, noise, images = tiny_mechanism
    decoys = DecoyMap.for_owner(noise, SECRET)
    images = images[:40]
    grouped = {}
    for group in (7, 1000):
        monkeypatch.setattr(encode_module, "MECHANISM_ITEMS", group)
        grouped[group] = encode_images(model, noise, decoys, images)
    assert np.array_equal(grouped[7].mask, grouped[1000].mask)
    assert np.array_equal(grouped[7].values, grouped[1000].values)
    assert grouped[7].keys == grouped[1000].keys
