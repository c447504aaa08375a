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

from imambig.access.secrets import Secret

# Importing an attack module registers its attacks.
from imambig.attacks import (  # noqa: F401
    discriminator,
    linear_consistency,
    magnitude,
    position,
    random_guess,
    reencode,
)
from imambig.attacks.registry import ATTACKS, AttackContext, Guess
from imambig.attacks.scoring import AttackResult, decode_quality, evaluate, subset
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.noise_model import NoiseModel
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


@torch.no_grad()
def attacker_ambiguation(
    model: SparseAutoencoder,
    noise: NoiseModel,
    images: torch.Tensor,
    secret: Secret,
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
    """Run attacks ``names`` (default: every registered one) on ``amb_target``.

    ``target_images`` (B, 3, H, W) in [0, 1] are the originals the decoded guesses are
    compared with. The trained attacks learn from ``attacker_amb`` when given (e.g. a
    different mechanism under test), else from ``attacker_images`` ambiguated through
    the public mechanism with a secret derived from ``seed``. ``max_items_lp`` /
    ``max_maps_lp`` bound the LP attack (one LP per map; slow).
    """
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
    if own is None and any(ATTACKS[n].trained for n in names):
        if attacker_images is None:
            raise ValueError("trained attacks need attacker_images or attacker_amb")
        secret = Secret(hashlib.sha256(f"imambig attacker secret {seed}".encode()).digest())
        say(f"attacker ambiguates its {len(attacker_images)} own images")
        own = attacker_ambiguation(model, noise, attacker_images, secret)

    ctx = AttackContext(model, amb_target, own, seed, discriminator_epochs, reencode_iterations,
                        max_items_lp, max_maps_lp)
    for name in names:
        t0 = time.perf_counter()
        guess = ATTACKS[name].run(ctx)
        results.append(_row(guess, ctx, target_images, time.perf_counter() - t0))
        say(f"{results[-1].name}: recall {results[-1].recall:.3f}, {results[-1].seconds:.1f} s")
    return results


def _reference(name: str, psnr: float, ssim_: float, n: int, seconds: float) -> AttackResult:
    return AttackResult(name, None, None, None, None, psnr, ssim_, n, seconds, "reference")


def _row(guess: Guess, ctx: AttackContext, images: torch.Tensor, seconds: float) -> AttackResult:
    """Score a guess; one on the first items or maps only (a slow attack) is scored on
    those, and decoded only when it covers every map (a partial code decodes to nothing)."""
    nb, nl = guess.scores.shape[:2]
    part = subset(ctx.target, slice(0, nb))
    if nl < ctx.target.values.shape[1]:
        part = Ambiguated(part.mask[:, :nl], part.values[:, :nl], part.real[:, :nl])
        return evaluate(guess.label, guess.scores, part, ctx.k, seconds=seconds,
                        notes=guess.notes)
    return evaluate(guess.label, guess.scores, part, ctx.k, ctx.model, images[:nb], seconds,
                    guess.notes)


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
