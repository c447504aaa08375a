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
from dataclasses import dataclass

import torch

from imambig.access.secrets import Secret

# Importing an attack module registers its attacks.
from imambig.attacks import (  # noqa: F401
    discriminator,
    learned_inversion,
    linear_consistency,
    magnitude,
    position,
    random_guess,
    reencode,
)
from imambig.attacks.registry import ATTACKS, AttackContext, Guess
from imambig.attacks.scoring import (
    AttackResult,
    decode_images,
    evaluate,
    guessed_code,
    image_quality,
    subset,
)
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


def attacker_secret(seed: int, release: int = 0) -> Secret:
    """The attacker's own secret for its ``release``-th ambiguation of its images."""
    return Secret(hashlib.sha256(f"imambig attacker secret {seed}/{release}".encode()).digest())


@torch.no_grad()
def attacker_ambiguation(
    model: SparseAutoencoder,
    noise: NoiseModel,
    h: torch.Tensor,
    secret: Secret,
    batch: int = 256,
) -> Ambiguated:
    """The attacker ambiguates its own bottlenecks ``h`` with its own secret, through the
    public mechanism, so it knows which of these entries are real."""
    decoy_map = DecoyMap.for_owner(noise, secret)
    return Ambiguated.concatenate([ambiguate(model, h[s : s + batch], noise, decoy_map)
                        for s in range(0, len(h), batch)])


@dataclass
class Outcome:
    """The rows of one run, and what each row reconstructed (for the identity rows)."""

    results: list[AttackResult]
    images: dict[str, torch.Tensor]


def run_attacks(
    model: SparseAutoencoder,
    amb_target: Ambiguated,
    target_images: torch.Tensor,
    names: Sequence[str] | None = None,
    *,
    releases: Sequence[Ambiguated] = (),
    own_images: torch.Tensor | None = None,
    k_public: int | None = None,
    seed: int = 0,
    max_items_lp: int | None = 20,
    max_maps_lp: int | None = None,
    discriminator_epochs: int = 4,
    reencode_iterations: int = 3,
    inversion_epochs: int = 6,
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Run attacks ``names`` (default: every registered one) on ``amb_target``.

    ``target_images`` (B, 3, H, W) in [0, 1] are the originals the guesses are compared
    with. The trained attacks learn from the attacker's own records ``releases`` (its
    own images ``own_images`` ambiguated through the public mechanism, once per secret
    of its own; the first release trains the entry classifiers, all of them the learned
    inversion). ``max_items_lp`` / ``max_maps_lp`` bound the LP attack (slow).
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
    if any(ATTACKS[n].trained for n in names) and not releases:
        raise ValueError("trained attacks need the attacker's own records (releases)")
    say = log or (lambda _msg: None)
    model.eval()

    out = Outcome([], {})
    for name, code in (("authorized", amb_target.authorized_code()),
                       ("public as is", amb_target.public_code())):
        t = time.perf_counter()
        out.images[name] = decode_images(model, code)
        psnr, ssim_ = image_quality(out.images[name], target_images)
        out.results.append(_reference(name, psnr, ssim_, B, time.perf_counter() - t))

    ctx = AttackContext(model, amb_target, releases[0] if releases else None, seed,
                        discriminator_epochs, reencode_iterations, max_items_lp, max_maps_lp,
                        own_images, tuple(releases), inversion_epochs)
    for name in names:
        t0 = time.perf_counter()
        guess = ATTACKS[name].run(ctx)
        row, images = _row(guess, ctx, target_images, time.perf_counter() - t0)
        out.results.append(row)
        if images is not None:
            out.images[row.name] = images
        parts = ([] if row.recall is None else [f"recall {row.recall:.3f}"]) + (
            [] if row.psnr is None else [f"PSNR {row.psnr:.2f} dB"])
        say(f"{row.name}: {', '.join([*parts, f'{row.seconds:.1f} s'])}")
    return out


def _reference(name: str, psnr: float, ssim_: float, n: int, seconds: float) -> AttackResult:
    return AttackResult(name, None, None, None, None, psnr, ssim_, n, seconds, "reference")


def _row(guess: Guess, ctx: AttackContext, images: torch.Tensor, seconds: float
         ) -> tuple[AttackResult, torch.Tensor | None]:
    """Score a guess and return what it reconstructs. A guess of images is judged as an
    image; one of scores on the first items or maps only (a slow attack) is scored on
    those, and decoded only when it covers every map (a partial code decodes to
    nothing)."""
    if guess.images is not None:
        psnr, ssim_ = image_quality(guess.images, images)
        return AttackResult(guess.label, None, None, None, None, psnr, ssim_,
                            len(guess.images), seconds, guess.notes), guess.images
    assert guess.scores is not None
    nb, nl = guess.scores.shape[:2]
    part = subset(ctx.target, slice(0, nb))
    if nl < ctx.target.values.shape[1]:
        part = Ambiguated(part.mask[:, :nl], part.values[:, :nl], part.real[:, :nl])  # scores only
        return evaluate(guess.label, guess.scores, part, ctx.k, seconds=seconds,
                        notes=guess.notes), None
    decoded = decode_images(ctx.model, guessed_code(part, guess.scores, ctx.k))
    row = evaluate(guess.label, guess.scores, part, ctx.k, seconds=seconds, notes=guess.notes)
    row.psnr, row.ssim = image_quality(decoded, images[:nb])
    return row, decoded if nb == len(images) else None


def format_table(results: list[AttackResult]) -> str:
    """Markdown table of results."""

    def f(v: float | None, digits: int) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    lines = [
        "| attack | recall | ± (maps) | chance | AUC | PSNR (dB) | SSIM | identity top-1 | "
        "identity AUC | items | s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {f(r.recall, 3)} | {f(r.recall_std, 3)} | {f(r.chance, 3)} | "
            f"{f(r.auc, 3)} | {f(r.psnr, 2)} | {f(r.ssim, 3)} | {f(r.identity_top1, 3)} | "
            f"{f(r.identity_auc, 3)} | {r.n_items} | {r.seconds:.1f} | {r.notes} |"
        )
    return "\n".join(lines)


def to_json(results: list[AttackResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=2)
