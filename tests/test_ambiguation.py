"""Ambiguation: exact sizes, the authorized code, determinism, nothing public leaks
which entries are real."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imambig.access.secrets import Secret
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.keys import decode_keys, key_bytes
from imambig.mechanism.noise_model import NoiseModel, fit_noise_model
from imambig.mechanism.quantizer import quantize
from imambig.model.checkpoint import load_model
from imambig.model.layers.topk import topk_sparsify
from imambig.stages.encode_images import encode_images
from imambig.stores.image_store import open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location

SECRET = Secret(b"s" * 32)
OTHER = Secret(b"o" * 32)


@pytest.fixture(scope="module")
def setup(synthetic_store: Location, tiny_model: Location):
    torch.set_num_threads(1)
    model, info, _ = load_model(tiny_model)
    store = open_image_store(synthetic_store)
    train = store.indices("train")
    noise = fit_noise_model(
        model, info.model_id, (to_tensor(store.read(train[s : s + 64])) for s in
                               range(0, len(train), 64)), k_public=2 * model.config.k,
    )
    test = store.indices("test")[:24]
    images = store.read(test)
    ids = [str(i) for i in store.item_ids()[test]]
    return model, info.model_id, noise, images, ids


def test_sizes_and_real_support(setup) -> None:
    model, mid, noise, images, ids = setup
    c = model.config
    with torch.no_grad():
        h = model.bottleneck(to_tensor(images))
        amb = ambiguate(model, h, noise, SECRET, mid, ids)
        z = model.encode(to_tensor(images))
    assert (amb.mask.sum(-1) == 2 * c.k).all()
    assert (amb.real.sum(-1) == c.k).all()
    assert amb.values.dtype == np.float16 and (amb.values != 0).all()
    # the real entries sit exactly on the top-k support
    real_mask = np.zeros_like(amb.mask)
    real_mask[amb.mask] = amb.real.ravel()
    assert np.array_equal(real_mask, (z != 0).numpy())


def test_authorized_code_is_the_quantized_topk_code(setup) -> None:
    model, mid, noise, images, ids = setup
    with torch.no_grad():
        x = to_tensor(images)
        h = model.bottleneck(x)
        amb = ambiguate(model, h, noise, SECRET, mid, ids)
        expected = quantize(topk_sparsify(model.linear(h), model.config.k)).float()
        assert torch.equal(amb.authorized_code(), expected)
        assert torch.equal(model.decode(amb.authorized_code()), model.decode(expected))


def test_same_item_same_bytes_other_secret_other_fakes(setup) -> None:
    model, mid, noise, images, ids = setup
    a = encode_images(model, noise, SECRET, mid, images, ids)
    b = encode_images(model, noise, SECRET, mid, images, ids)
    assert np.array_equal(a.mask, b.mask) and a.values.tobytes() == b.values.tobytes()
    assert a.keys == b.keys
    c = encode_images(model, noise, OTHER, mid, images, ids)
    assert not np.array_equal(a.mask, c.mask)
    # the real part is the same: only the fakes depend on the secret
    ra, rc = decode_keys(a.keys), decode_keys(c.keys)
    assert np.array_equal(a.values[ra], c.values[rc])


def test_item_encoded_alone_equals_item_in_a_batch(setup) -> None:
    model, mid, noise, images, ids = setup
    bulk = encode_images(model, noise, SECRET, mid, images, ids)
    for i in (0, 5, 13, 23):
        alone = encode_images(model, noise, SECRET, mid, images[i : i + 1], ids[i : i + 1])
        assert np.array_equal(alone.mask[0], bulk.mask[i])
        assert alone.values[0].tobytes() == bulk.values[i].tobytes()
        assert alone.keys[0] == bulk.keys[i]


def test_keys_decode_to_the_real_entries(setup) -> None:
    model, mid, noise, images, ids = setup
    enc = encode_images(model, noise, SECRET, mid, images, ids)
    c = model.config
    assert all(len(k) == key_bytes(c.n_maps, 2 * c.k, c.k) for k in enc.keys)
    with torch.no_grad():
        amb = ambiguate(model, model.bottleneck(to_tensor(images)), noise, SECRET, mid, ids)
    assert np.array_equal(decode_keys(enc.keys), amb.real)


def test_noise_model_round_trip_and_model_binding(setup, tmp_path) -> None:
    model, _, noise, _, _ = setup
    url = str(tmp_path / "noise.npz")
    noise.save(Location(url))
    back = NoiseModel.load(Location(url))
    assert back.model_id == noise.model_id and back.k_public == noise.k_public
    assert np.array_equal(back.components, noise.components)
    # a file from another noise design is refused by name, not with a KeyError
    with np.load(url) as z:
        old = {k: z[k] for k in z.files if k != "flip_pos"}
    old_url = tmp_path / "old.npz"
    np.savez(old_url, **old)
    with pytest.raises(ValueError, match=r"old\.npz.*flip_pos.*delete it to refit"):
        NoiseModel.load(Location(str(old_url)))
    with pytest.raises(ValueError, match="fitted for model"):
        ambiguate(model, torch.zeros(1, model.config.n_maps, model.config.bottleneck_size),
                  back, SECRET, "another-model", ["x"])
