"""Attack suite: scoring on hand-made cases, the oversized-fakes bug caught, every attack
well-formed on a real ambiguated batch (tiny untrained model, synthetic images)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from imambig.access.secrets import Secret
from imambig.attacks.discriminator import Discriminator
from imambig.attacks.linear_consistency import (
    _Problems,
    _solve,
    least_squares_scores,
    lp_scores,
)
from imambig.attacks.linkage import link
from imambig.attacks.magnitude import MagnitudeLikelihood, largest_scores, smallest_scores
from imambig.attacks.position import PositionFrequency
from imambig.attacks.random_guess import random_scores
from imambig.attacks.reencode import reencode_scores
from imambig.attacks.scoring import (
    AttackResult,
    guessed_code,
    per_map_recall,
    roc_auc,
    support_recall,
)
from imambig.attacks.second_release import PairClassifier, intersect_scores
from imambig.attacks.suite import attacker_ambiguation, format_table, run_attacks, to_json
from imambig.config import ModelConfig, preset
from imambig.evaluation.metrics import ssim
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel, fit_noise_model
from imambig.mechanism.record import Ambiguated, scatter_code
from imambig.model.autoencoder import SparseAutoencoder

MODEL_ID = "test-model"
K_PUBLIC = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Small convolutions run far faster on one thread than on contended ones.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(base, size=size, mode="bilinear").clamp(0, 1)


@pytest.fixture(scope="module")
def setup() -> tuple[SparseAutoencoder, NoiseModel]:
    torch.manual_seed(0)
    model = SparseAutoencoder(preset("tiny")).eval()
    noise = fit_noise_model(model, MODEL_ID, [smooth_images(64, 1)], k_public=K_PUBLIC)
    return model, noise


@pytest.fixture(scope="module")
def target(setup: tuple[SparseAutoencoder, NoiseModel]) -> tuple[Ambiguated, torch.Tensor]:
    model, noise = setup
    images = smooth_images(12, 3)
    with torch.no_grad():
        h = model.bottleneck(images)
    owner = DecoyMap.for_owner(noise, Secret(b"owner secret, 32 bytes or more!!"))
    return ambiguate(model, h, noise, owner), images


@pytest.fixture(scope="module")
def own(setup: tuple[SparseAutoencoder, NoiseModel]) -> Ambiguated:
    model, noise = setup
    with torch.no_grad():
        h = model.bottleneck(smooth_images(48, 2))
    return attacker_ambiguation(model, noise, h, Secret(b"attacker secret of 32 bytes....!"))


def with_oversized_fakes(amb: Ambiguated, factor: float = 4.0, seed: int = 0) -> Ambiguated:
    """The reference sampler's bug: fake magnitudes drawn from the real (tail)
    distribution of the map, then multiplied by m/k = 4; random signs. On the records
    under the seal (the attacks' mechanics, not the seal, are under test)."""
    amb = amb.opened()
    rng = np.random.default_rng(seed)
    values = amb.values.astype(np.float32)
    out = values.copy()
    for idx in np.ndindex(*values.shape[:2]):
        real = np.abs(values[idx][amb.real[idx]])
        fake = ~amb.real[idx]
        draws = rng.choice(real, fake.sum()) * factor
        out[idx][fake] = draws * rng.choice([-1.0, 1.0], fake.sum())
    return Ambiguated(amb.mask, out.astype(np.float16), amb.real)


# -- scoring -----------------------------------------------------------------------------


def test_recall_and_auc_on_hand_made_scores() -> None:
    rng = np.random.default_rng(0)
    real = np.zeros((3, 4, 10), bool)
    for idx in np.ndindex(3, 4):
        real[idx][rng.choice(10, 4, replace=False)] = True
    perfect = real.astype(float) + rng.random(real.shape) * 0.1
    assert support_recall(perfect, real, 4) == 1.0
    assert roc_auc(perfect, real) == 1.0
    assert support_recall(-perfect, real, 4) == 0.0
    assert roc_auc(-perfect, real) == 0.0
    assert roc_auc(np.zeros(real.shape), real) == 0.5
    assert per_map_recall(perfect, real, 4).shape == (3, 4)


def test_auc_counts_ties_half() -> None:
    real = np.array([True, False, True, False])
    # Pairs (real, fake): (1, 0) wins, (1, 1) tie, (0.5, 0) wins, (0.5, 1) loses.
    assert roc_auc(np.array([1.0, 0.0, 0.5, 1.0]), real) == pytest.approx(2.5 / 4)


def test_random_guess_is_at_chance() -> None:
    rng = np.random.default_rng(1)
    real = np.zeros((50, 20, 32), bool)
    real[..., :16] = True
    amb = Ambiguated(
        np.ones((50, 20, 32), bool), np.ones((50, 20, 32), np.float16), rng.permuted(real, axis=-1)
    )
    scores = random_scores(amb, seed=3)
    assert support_recall(scores, amb.real, 16) == pytest.approx(0.5, abs=0.02)
    assert roc_auc(scores, amb.real) == pytest.approx(0.5, abs=0.02)
    assert np.array_equal(scores, random_scores(amb, seed=3))


def test_guessed_code_keeps_guessed_entries() -> None:
    mask = np.zeros((1, 1, 6), bool)
    mask[0, 0, [0, 2, 3, 5]] = True
    values = np.array([[[1.0, -2.0, 3.0, -4.0]]], np.float16)
    amb = Ambiguated(mask, values, np.array([[[True, False, True, False]]]))
    code = guessed_code(amb, np.array([[[0.0, 9.0, 1.0, 5.0]]]), k=2)
    assert code.tolist() == [[[0.0, 0.0, -2.0, 0.0, 0.0, -4.0]]]
    assert torch.equal(scatter_code(mask, values), amb.public_code())


def test_ssim_matches_an_independent_computation() -> None:
    rng = np.random.default_rng(0)
    smooth = smooth_images(2, 5, size=24) * 255
    a = smooth.round().to(torch.uint8)
    noisy = smooth + torch.from_numpy(rng.normal(0, 20, smooth.shape))
    b = noisy.clamp(0, 255).round().to(torch.uint8)
    assert ssim(a, a) == pytest.approx([1.0, 1.0])
    assert ssim(b, a) == pytest.approx(ssim(a, b))
    # Reference: scipy Gaussian filter (radius 5 = an 11-tap window), borders cropped.
    x, y = a.double().numpy(), b.double().numpy()

    def blur(t: np.ndarray) -> np.ndarray:
        out = gaussian_filter(t, sigma=(0, 0, 1.5, 1.5), truncate=5 / 1.5)
        return out[..., 5:-5, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ref = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(a, b) == pytest.approx(ref.mean(axis=(1, 2, 3)), rel=1e-6)
    assert np.all(ssim(a, b) < 0.9)


# -- the bug the suite must catch -----------------------------------------------------------


def test_oversized_fakes_are_caught(
    target: tuple[Ambiguated, torch.Tensor], own: Ambiguated
) -> None:
    amb = with_oversized_fakes(target[0])
    k = int(amb.real[0, 0].sum())
    lr = MagnitudeLikelihood.fit(with_oversized_fakes(own))
    assert support_recall(lr.scores(amb), amb.real, k) > 0.9
    assert support_recall(smallest_scores(amb), amb.real, k) > 0.9
    assert support_recall(largest_scores(amb), amb.real, k) < 0.1


def test_least_squares_finds_the_linearly_consistent_entries() -> None:
    # n = 16 < k = 32: the real values lie in a 16-dim subspace; independent fakes do not.
    config = dataclasses.replace(preset("tiny"), n_maps=2, k=32,
                                 negative_slope=ModelConfig().negative_slope)
    torch.manual_seed(0)
    model = SparseAutoencoder(config).eval()
    rng = np.random.default_rng(0)
    B, L, m, k, kp = 4, 2, 64, 32, 48
    with torch.no_grad():
        dense = model.linear(torch.randn(B, L, config.bottleneck_size)).double().numpy()
    mask = np.zeros((B, L, m), bool)
    real = np.zeros((B, L, m), bool)
    code = np.zeros((B, L, m))
    for b, l_ in np.ndindex(B, L):
        real_pos = np.argsort(-np.abs(dense[b, l_]))[:k]
        fake_pos = rng.choice(np.setdiff1d(np.arange(m), real_pos), kp - k, replace=False)
        code[b, l_, real_pos] = dense[b, l_, real_pos]
        signs = rng.choice([-1.0, 1.0], kp - k)
        code[b, l_, fake_pos] = np.abs(rng.choice(dense[b, l_, real_pos], kp - k)) * signs
        real[b, l_, real_pos] = True
        mask[b, l_, real_pos] = mask[b, l_, fake_pos] = True
    amb = Ambiguated(
        mask, code[mask].reshape(B, L, kp).astype(np.float16), real[mask].reshape(B, L, kp)
    )
    assert support_recall(least_squares_scores(model, amb, k), amb.real, k) > 0.95
    assert support_recall(lp_scores(model, amb, max_items=2), amb.real[:2], k) > 0.7


@pytest.mark.parametrize("active_rows", [5, 12, 30])
def test_weighted_solve_matches_the_ridge_normal_equations(active_rows: int) -> None:
    # Fewer active rows than unknowns (n = 12) takes the a x a route, more the n x n one;
    # both must give the ridge solution of the full weighted problem.
    rng = np.random.default_rng(active_rows)
    n_maps, m, n, items = 3, 40, 12, 2
    w = torch.from_numpy(rng.normal(size=(n_maps, m, n)))
    mask = np.zeros((items, n_maps, m), bool)
    mask[..., :8] = True
    amb = Ambiguated(mask, np.ones((items, n_maps, 8), np.float16), mask[..., :8].copy())
    p = _Problems(w, amb)
    weight = torch.zeros(items * n_maps, m, dtype=torch.float64)
    for row in weight:
        row[rng.choice(m, active_rows, replace=False)] = torch.from_numpy(
            rng.uniform(0.1, 2.0, active_rows))
    target = torch.from_numpy(rng.normal(size=(items * n_maps, m)))
    h = _solve(p, target, weight)
    for i in range(items * n_maps):
        wi = w[i % n_maps].numpy()
        gram = wi.T @ (weight[i].numpy()[:, None] * wi)
        ridge = 1e-9 * np.trace(gram) / n
        want = np.linalg.solve(gram + ridge * np.eye(n), wi.T @ (weight[i] * target[i]).numpy())
        np.testing.assert_allclose(h[i].numpy(), want, rtol=1e-5, atol=1e-6)


# -- every attack on a real ambiguated batch --------------------------------------------------


def test_trained_attacks_are_well_formed(
    setup: tuple[SparseAutoencoder, NoiseModel],
    target: tuple[Ambiguated, torch.Tensor],
    own: Ambiguated,
) -> None:
    amb = target[0]
    for scores in (
        MagnitudeLikelihood.fit(own).scores(amb),
        PositionFrequency.fit(own).scores(amb),
        Discriminator.fit(own, seed=0, epochs=1).scores(amb),
    ):
        assert scores.shape == amb.real.shape
        assert np.isfinite(scores).all()


def test_model_attacks_are_well_formed(
    setup: tuple[SparseAutoencoder, NoiseModel], target: tuple[Ambiguated, torch.Tensor]
) -> None:
    model, _ = setup
    amb = target[0]
    k = model.config.k
    for scores in (
        reencode_scores(model, amb, k, iterations=1),
        least_squares_scores(model, amb, k),
    ):
        assert scores.shape == amb.real.shape
        assert np.isfinite(scores).all()
    lp = lp_scores(model, amb, max_items=2, max_maps=3)
    assert lp.shape == (2, 3, amb.real.shape[-1])
    assert np.isfinite(lp).all()


def test_suite_reports_every_row(
    setup: tuple[SparseAutoencoder, NoiseModel],
    target: tuple[Ambiguated, torch.Tensor],
    own: Ambiguated,
) -> None:
    model, _ = setup
    amb, images = target
    names = ["random", "largest", "smallest", "magnitude", "position", "lp"]
    results = run_attacks(
        model, amb, images, names, releases=[own], max_items_lp=2, max_maps_lp=2
    ).results
    assert [r.name for r in results[:2]] == ["authorized", "public as is"]
    assert results[0].recall is None and results[0].psnr is not None
    assert len(results) == 2 + len(names)
    for r in results[2:]:
        assert isinstance(r, AttackResult)
        assert 0 <= r.recall <= 1 and 0 <= r.auc <= 1 and r.chance == 0.5
    assert results[-1].psnr is None  # the LP saw 2 of 8 maps: no image to decode
    assert all(r.psnr is not None for r in results[2:-1])
    table = format_table(results)
    assert table.count("\n") == len(results) + 1
    rows = json.loads(to_json(results))
    assert rows[2]["name"] == "random guess" and isinstance(rows[2]["recall"], float)


def test_attack_command_reports_every_k_public(synthetic_store, tiny_model, tmp_path) -> None:
    from imambig.cli import main
    from imambig.mechanism.keys import key_bytes

    out = tmp_path / "attacks.json"
    code = main(["attack", "--model", str(tiny_model), "--images", str(synthetic_store), "--fit", "60",
                 "--own", "40", "--targets", "20", "--attacks", "random,magnitude,position",
                 "--k-public", "24,32", "--second-release", "none", "--no-identity",
                 "--no-linkage", "--json", str(out)])
    assert code == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["k_public"] for r in runs] == [24, 32]
    for run in runs:
        assert run["key_bytes"] == key_bytes(8, run["k_public"], 16)
        assert 0.0 <= run["ks_pass_fraction"] <= 1.0
        rows = {r["name"]: r for r in run["results"]}
        assert {"authorized", "public as is", "random guess", "magnitude LR",
                "position", "mean face"} == set(rows)
        assert run["floor_psnr"] == max(rows["random guess"]["psnr"], rows["mean face"]["psnr"])
        assert rows["random guess"]["chance"] == pytest.approx(16 / run["k_public"])
        assert rows["authorized"]["recall"] is None and rows["authorized"]["psnr"] > 5
        for name in ("random guess", "magnitude LR", "position"):
            assert 0.0 <= rows[name]["recall"] <= 1.0 and 0.0 <= rows[name]["auc"] <= 1.0


def test_attack_command_explains_a_store_too_small(synthetic_store, tiny_model, capsys) -> None:
    from imambig.cli import main

    code = main(["attack", "--model", str(tiny_model), "--images", str(synthetic_store),
                 "--fit", "5000", "--attacks", "random"])
    assert code == 2
    assert "training items" in capsys.readouterr().err


# -- second releases, learned inversion, linkage ----------------------------------------


def test_intersecting_two_releases_with_fresh_fakes_recovers_the_key(
    setup: tuple[SparseAutoencoder, NoiseModel], target: tuple[Ambiguated, torch.Tensor],
) -> None:
    """What item-id noise allowed: two records of one code with different fakes (here:
    another secret). Unsealed, the intersection attack finds every real entry; the
    identical record, which is what the same image publishes now, tells it nothing; and
    sealed, two records with other fakes share nothing."""
    model, noise = setup
    amb, images = target
    with torch.no_grad():
        h = model.bottleneck(images)
    decoys = DecoyMap.for_owner(noise, Secret(b"f" * 32))
    fresh = ambiguate(model, h, noise, decoys, sealed=False)
    opened = amb.opened()
    assert support_recall(intersect_scores(opened, fresh), opened.real, 16) > 0.9  # chance 0.5
    assert support_recall(intersect_scores(opened, opened), opened.real, 16) < 0.75
    sealed = ambiguate(model, h, noise, decoys)
    assert support_recall(intersect_scores(amb, sealed), amb.real, 16) < 0.6


def test_pair_classifier_learns_from_own_pairs(
    setup: tuple[SparseAutoencoder, NoiseModel], own: Ambiguated,
    target: tuple[Ambiguated, torch.Tensor],
) -> None:
    amb, _ = target
    # A second record whose fakes all vanish: the classifier must learn "present in B".
    def drop_fakes(a: Ambiguated) -> Ambiguated:
        mask = a.mask.copy()
        mask[a.mask] = a.real.ravel()
        extra = np.zeros_like(mask)  # keep k' entries per map: add new positions
        for b, m in np.ndindex(*mask.shape[:2]):
            free = np.flatnonzero(~a.mask[b, m])[: (~a.real[b, m]).sum()]
            extra[b, m, free] = True
        mask |= extra
        return Ambiguated(mask, np.ones(a.values.shape, np.float16), np.zeros_like(a.real))

    clf = PairClassifier.fit(own, drop_fakes(own), epochs=2)
    scores = clf.scores(amb, drop_fakes(amb))
    assert scores.shape == amb.real.shape
    assert support_recall(scores, amb.real, 16) > 0.9


def test_learned_inversion_decodes_public_codes(
    setup: tuple[SparseAutoencoder, NoiseModel], target: tuple[Ambiguated, torch.Tensor],
    own: Ambiguated,
) -> None:
    model, _ = setup
    amb, images = target
    own_images = smooth_images(48, 2)
    results = run_attacks(model, amb, images, ["learned_inversion", "inversion_reencode"],
                          releases=[own], own_images=own_images, inversion_epochs=1)
    rows = {r.name: r for r in results.results}
    inverted = rows["learned inversion"]
    assert inverted.recall is None and inverted.psnr is not None  # an image, not a guess
    assert results.images["learned inversion"].shape == images.shape
    assert rows["inversion + re-encode"].recall is not None
    with pytest.raises(ValueError, match="own records"):
        run_attacks(model, amb, images, ["learned_inversion"])


def test_linkage_needs_the_seal(setup: tuple[SparseAutoencoder, NoiseModel],
                                target: tuple[Ambiguated, torch.Tensor]) -> None:
    """The exact photo finds its record under the seal (deterministic codes), not the
    sealed record: among 12, top-1 at most a few lucky hits."""
    model, _ = setup
    amb, images = target
    order = np.arange(len(images))[::-1].copy()
    assert link(model, images[order], amb.opened(), order) == 1.0
    assert link(model, images[order], amb, order) <= 0.25
