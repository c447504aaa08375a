"""The attack suite: run the chosen attacks on a batch of ambiguated target items and
report one row each, beside two reference rows (the authorized decode, and the public
code decoded as is).

The attacker of every trained attack has what Kerckhoffs grants it: the model, the
mechanism and the noise fit, plus images of its own that it ambiguates with a secret of
its own, which tells it the labels of *its* entries.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from imambig.attacks.discriminator import Discriminator
from imambig.attacks.linear_consistency import least_squares_scores, lp_scores
from imambig.attacks.magnitude import MagnitudeLikelihood, largest_scores, smallest_scores
from imambig.attacks.position import PositionFrequency
from imambig.attacks.random_guess import random_scores
from imambig.attacks.reencode import reencode_scores
from imambig.attacks.scoring import AttackResult, decode_quality, evaluate, subset
from imambig.mechanism.ambiguation import Ambiguated, ambiguate
from imambig.mechanism.noise_model import NoiseModel
from imambig.model.autoencoder import SparseAutoencoder

ATTACKS = (
    "random",
    "largest",
    "smallest",
    "magnitude",
    "position",
    "discriminator",
    "reencode",
    "least_squares",
    "least_squares_reencode",
    "lp",
)
# Attacks that learn from the attacker's own ambiguated codes.
TRAINED = frozenset({"magnitude", "position", "discriminator"})


@torch.no_grad()
def attacker_ambiguation(
    model: SparseAutoencoder,
    noise: NoiseModel,
    images: torch.Tensor,
    secret: bytes,
    batch: int = 64,
) -> Ambiguated:
    """The attacker ambiguates its own images with its own secret, through the public
    mechanism, so it knows which of these entries are real."""
    model.eval()
    parts = []
    for s in range(0, len(images), batch):
        h = model.bottleneck(images[s : s + batch])
        ids = [f"attacker/{i}" for i in range(s, s + len(h))]
        parts.append(ambiguate(model, h, noise, secret, noise.model_id, ids))
    return Ambiguated(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("mask", "values", "real"))
    )


def run_attacks(
    model: SparseAutoencoder,
    noise: NoiseModel,
    amb_target: Ambiguated,
    target_images: torch.Tensor,
    attacker_images: torch.Tensor | None,
    names: Sequence[str] | None = None,
    *,
    k_public: int | None = None,
    seed: int = 0,
    max_items_lp: int | None = 20,
    max_maps_lp: int | None = None,
    attacker_amb: Ambiguated | None = None,
    discriminator_epochs: int = 4,
    reencode_iterations: int = 3,
    log: Callable[[str], None] | None = None,
) -> list[AttackResult]:
    """Run attacks ``names`` (default: all of ``ATTACKS``) on ``amb_target``.

    ``target_images`` (B, 3, H, W) in [0, 1] are the originals the decoded guesses are
    compared with. The trained attacks learn from ``attacker_amb`` when given (e.g. a
    different mechanism under test), else from ``attacker_images`` ambiguated through
    the public mechanism with a secret derived from ``seed``. ``max_items_lp`` /
    ``max_maps_lp`` bound the LP attack (one LP per map; slow).
    """
    k = model.config.k
    B, _, kp = amb_target.values.shape
    if k_public is not None and k_public != kp:
        raise ValueError(f"records have k'={kp}, expected {k_public}")
    if len(target_images) != B:
        raise ValueError(f"{len(target_images)} target images for {B} records")
    names = list(ATTACKS if names is None else names)
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; choose from {list(ATTACKS)}")
    say = log or (lambda _msg: None)
    model.eval()

    results = []
    t = time.perf_counter()
    psnr, ssim_ = decode_quality(model, amb_target.authorized_code(), target_images)
    results.append(_reference("authorized", psnr, ssim_, B, time.perf_counter() - t))
    t = time.perf_counter()
    psnr, ssim_ = decode_quality(model, amb_target.public_code(), target_images)
    results.append(_reference("public as is", psnr, ssim_, B, time.perf_counter() - t))

    own = attacker_amb
    if own is None and TRAINED & set(names):
        if attacker_images is None:
            raise ValueError("trained attacks need attacker_images or attacker_amb")
        secret = hashlib.sha256(f"imambig attacker secret {seed}".encode()).digest()
        say(f"attacker ambiguates its {len(attacker_images)} own images")
        own = attacker_ambiguation(model, noise, attacker_images, secret)

    cache: dict[str, np.ndarray] = {}  # re-encode scores, shared by two rows
    for name in names:
        t0 = time.perf_counter()
        if name == "lp":
            results.append(_lp_row(model, amb_target, target_images, k, max_items_lp, max_maps_lp))
        else:
            label, scores, notes = _attack(
                name, model, amb_target, own, seed, discriminator_epochs, reencode_iterations, cache
            )
            seconds = time.perf_counter() - t0
            results.append(
                evaluate(label, scores, amb_target, k, model, target_images, seconds, notes)
            )
        say(f"{results[-1].name}: recall {results[-1].recall:.3f}, {results[-1].seconds:.1f} s")
    return results


def _attack(
    name: str,
    model: SparseAutoencoder,
    amb: Ambiguated,
    own: Ambiguated | None,
    seed: int,
    discriminator_epochs: int,
    reencode_iterations: int,
    cache: dict[str, np.ndarray],
) -> tuple[str, np.ndarray, str]:
    """(row name, scores, notes) of one attack other than the LP."""
    k = model.config.k

    def reencoded() -> np.ndarray:
        if "reencode" not in cache:
            cache["reencode"] = reencode_scores(model, amb, k, reencode_iterations)
        return cache["reencode"]

    if name == "random":
        return "random guess", random_scores(amb, seed), ""
    if name == "largest":
        return "keep k largest", largest_scores(amb), ""
    if name == "smallest":
        return "keep k smallest", smallest_scores(amb), ""
    if name == "reencode":
        return "re-encode", reencoded(), f"{reencode_iterations} refinements"
    n = model.config.bottleneck_size
    few = "" if n < k else f"; n={n} >= k={k}: any k entries fit exactly"
    if name == "least_squares":
        return "least squares", least_squares_scores(model, amb, k), "split fit" + few
    if name == "least_squares_reencode":
        # Chained: the re-encode guess is one more start (its time counts here only when
        # the re-encode row did not run first).
        scores = least_squares_scores(model, amb, k, starts={"reencode": reencoded()})
        return "least squares + re-encode start", scores, "split fit" + few
    assert own is not None and name in TRAINED
    own_note = f"fit on {len(own.values)} own items"
    if name == "magnitude":
        return "magnitude LR", MagnitudeLikelihood.fit(own).scores(amb), own_note
    if name == "position":
        return "position", PositionFrequency.fit(own).scores(amb), own_note
    disc = Discriminator.fit(own, seed=seed, epochs=discriminator_epochs)
    if disc.val_auc is not None:
        own_note += f"; own held-out AUC {disc.val_auc:.3f}"
    return "discriminator", disc.scores(amb), own_note


def _reference(name: str, psnr: float, ssim_: float, n: int, seconds: float) -> AttackResult:
    return AttackResult(name, None, None, None, None, psnr, ssim_, n, seconds, "reference")


def _lp_row(
    model: SparseAutoencoder,
    amb: Ambiguated,
    images: torch.Tensor,
    k: int,
    max_items: int | None,
    max_maps: int | None,
) -> AttackResult:
    t0 = time.perf_counter()
    scores = lp_scores(model, amb, max_items, max_maps)
    seconds = time.perf_counter() - t0
    nb, nl = scores.shape[:2]
    L = amb.values.shape[1]
    part = subset(amb, slice(0, nb))
    if nl < L:  # a guess on some maps only decodes to no image: score recall/AUC alone
        part = Ambiguated(part.mask[:, :nl], part.values[:, :nl], part.real[:, :nl])
        res = evaluate("LP", scores, part, k, seconds=seconds)
    else:
        res = evaluate("LP", scores, part, k, model, images[:nb], seconds)
    res.notes = f"first {nb} items, {nl} of {L} maps"
    return res


def format_table(results: list[AttackResult]) -> str:
    """Markdown table of results."""

    def f(v: float | None, digits: int) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    lines = [
        "| attack | recall | ± (maps) | chance | AUC | PSNR (dB) | SSIM | items | s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {f(r.recall, 3)} | {f(r.recall_std, 3)} | {f(r.chance, 3)} | "
            f"{f(r.auc, 3)} | {f(r.psnr, 2)} | {f(r.ssim, 3)} | {r.n_items} | "
            f"{r.seconds:.1f} | {r.notes} |"
        )
    return "\n".join(lines)


def to_json(results: list[AttackResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=2)
