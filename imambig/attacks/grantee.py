"""Grantee attacks: a holder of a lower-fidelity grant who wants more than it was granted.

A ``k_low`` grantee holds, per map, ``k_low`` of the ``k`` real entries themselves
(positions and values, :mod:`imambig.mechanism.grant_entries`), the public model, the
sealed public record, faces of its own, and possibly the full keys of many *other* items
of the same owner and model. The attacks:

- **grant as is**: the grant decoded as ``imambig reveal`` does, with the owner's
  published grant decoder where there is one (:mod:`imambig.stages.grant_decoder`), or
  the model's own decoder: the grant's own fidelity;
- **re-encode**: from that image, encode, keep the revealed entries and the re-encoded
  code's largest ``k - k_low`` other entries per map, decode, repeat;
- **learned inversion**: a copy of the (grant) decoder fine-tuned on what a grantee of that
  fidelity sees of its own faces (their top-k codes cut to a random ``k_low`` per map,
  as many draws as it likes: to anyone without the seal the owner's choice is a uniform
  random subset), applied to the grant;
- **inversion + re-encode**: the inversion's image as the start of the re-encoding;
- **key holder**: also holds the full keys (seals and supports) of other items. It tries
  every seal it holds on every target's sealed record (a seal that unseals a record
  shows the grant's entries among its entries), and adds those items' authorized images
  to the inversion's training set.

Each row reports PSNR/SSIM and the *support overlap*: the share of the hidden real
positions (real, not revealed) among the ``k - k_low`` other positions the attack keeps,
against chance ``(k - k_low) / (m - k_low)``. No record the grantee holds shows any
hidden entry, so there is no recall among candidates to measure; the overlap measures
what the network's prior infers from the granted entries alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from imambig.attacks.learned_inversion import invert, train_inverter
from imambig.attacks.scoring import AttackResult, decode_images, image_quality
from imambig.mechanism.grant_entries import entries_code, random_views
from imambig.mechanism.record import Ambiguated
from imambig.mechanism.seal import _stream
from imambig.model.autoencoder import SparseAutoencoder

BATCH = 64


@dataclass(frozen=True)
class GrantView:
    """What ``k_low`` grants of a batch of items hold: positions (B, L, m) and values
    (B, L, k_low) float16 in position order."""

    mask: np.ndarray
    values: np.ndarray

    @property
    def k_low(self) -> int:
        return self.values.shape[-1]

    def code(self) -> torch.Tensor:
        return entries_code(self.mask, self.values)


@torch.no_grad()
def dense_codes(model: SparseAutoencoder, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.dense_code(images[s : s + BATCH])
                      for s in range(0, len(images), BATCH)])


def forced_top_k(dense: torch.Tensor, view: GrantView, k: int) -> torch.Tensor:
    """The code that keeps ``view``'s entries and, per map, the ``k - k_low`` other
    entries of ``dense`` (B, L, m) largest in magnitude."""
    revealed = torch.from_numpy(view.mask)
    others = dense.abs().masked_fill(revealed, -1.0)
    top = others.topk(k - view.k_low, dim=-1).indices
    code = torch.zeros_like(dense).scatter(-1, top, dense.gather(-1, top))
    return torch.where(revealed, view.code(), code)


def reencode_forced(model: SparseAutoencoder, view: GrantView, k: int, rounds: int = 3,
                    start: torch.Tensor | None = None) -> torch.Tensor:
    """The code after ``rounds`` of decode -> encode -> keep the grant's entries and
    the largest others; starts from the grant alone, or from images ``start``."""
    code = view.code() if start is None else forced_top_k(dense_codes(model, start), view, k)
    for _ in range(rounds):
        code = forced_top_k(dense_codes(model, decode_images(model, code)), view, k)
    return code


def _views(codes: torch.Tensor, k_low: int, draws: int, seed: int) -> torch.Tensor:
    """``draws`` random ``k_low`` views of each of ``codes``: a grantee's training set."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([random_views(codes, k_low, gen) for _ in range(draws)])


def support_overlap(code: torch.Tensor, view: GrantView, true_support: np.ndarray) -> float:
    """Share of the hidden real positions among the attack's kept non-revealed ones."""
    kept = (code != 0).numpy() & ~view.mask
    hidden = true_support & ~view.mask
    return float((kept & hidden).sum() / max(1, hidden.sum()))


def seals_that_open(targets: Ambiguated, view: GrantView, seals: np.ndarray) -> np.ndarray:
    """(B,) bool: whether any held seal unseals target i's record so that map 0 shows
    every entry the grant reveals there (position and value)."""
    from imambig.mechanism.seal import _pads_at, alphabet, from_symbols, to_symbols

    size = alphabet()
    m = targets.mask.shape[-1]
    streams = [_stream(np.asarray(s, np.uint8).tobytes(), 1, m) for s in seals]
    opened = np.zeros(len(targets.mask), bool)
    for i in range(len(targets.mask)):
        public = np.nonzero(targets.mask[i, 0])[0][None]
        symbols = to_symbols(targets.values[i, :1])
        want = set(zip(np.nonzero(view.mask[i, 0])[0].tolist(),
                       view.values[i, 0].view(np.uint16).tolist(), strict=True))
        for order, pads in streams:
            values = from_symbols((symbols - _pads_at(pads, public, size)) % size)
            got = set(zip(order[0, public[0]].tolist(), values[0].view(np.uint16).tolist(),
                          strict=True))
            if want <= got:
                opened[i] = True
                break
    return opened


@dataclass
class GranteeData:
    """The grantee's own material: its faces with their top-k codes; optionally the
    full records of other items it holds keys to (and their authorized images)."""

    own_images: torch.Tensor
    own_codes: torch.Tensor
    held: Ambiguated | None = None  # other items' sealed records, with their full keys
    held_images: torch.Tensor | None = None  # their authorized reconstructions


def run_grantee_attacks(model: SparseAutoencoder, view: GrantView, targets: Ambiguated,
                        images: torch.Tensor, data: GranteeData, k: int, *,
                        grant_decoder: SparseAutoencoder | None = None,
                        draws: int = 3, inversion_epochs: int = 6, rounds: int = 3,
                        seed: int = 0, log: Callable[[str], None] | None = None
                        ) -> tuple[list[AttackResult], dict[str, torch.Tensor]]:
    """Rows (and reconstructions) of every grantee attack on ``k_low`` grants ``view`` of
    the sealed records ``targets`` of ``images``; ``targets.real`` is used only to score.
    ``grant_decoder``: the owner's published one, which reveal uses and attacks start from."""
    decoder = model if grant_decoder is None else grant_decoder
    opened = targets.opened()
    true_support = np.zeros(view.mask.shape, bool)
    true_support[opened.mask] = opened.real.ravel()
    m = view.mask.shape[-1]
    chance = (k - view.k_low) / (m - view.k_low)
    rows: list[AttackResult] = []
    out: dict[str, torch.Tensor] = {}

    def row(name: str, code: torch.Tensor | None, decoded: torch.Tensor, t0: float,
            notes: str) -> None:
        psnr, ssim_ = image_quality(decoded, images)
        overlap = None if code is None else support_overlap(code, view, true_support)
        rows.append(AttackResult(name, overlap, None, chance, None, psnr, ssim_, len(images),
                                 time.perf_counter() - t0, notes))
        out[name] = decoded
        if log is not None:
            log(f"k_low={view.k_low} {name}: PSNR {psnr:.2f} dB"
                + ("" if overlap is None else f", support overlap {overlap:.3f}")
                + f", {rows[-1].seconds:.1f} s")

    t = time.perf_counter()
    as_is = decode_images(decoder, view.code())
    row("grant as is", view.code(), as_is, t,
        f"its {view.k_low} entries per map decoded, as reveal does ("
        + ("the grant decoder)" if grant_decoder is not None else "the model's decoder)"))
    t = time.perf_counter()
    code = reencode_forced(model, view, k, rounds, start=as_is)
    row("re-encode", code, decode_images(model, code), t,
        f"{rounds} rounds from the grant's image, the granted entries forced in")

    def inversion(train_codes: torch.Tensor, train_images: torch.Tensor) -> torch.Tensor:
        views = _views(train_codes, view.k_low, draws, seed)
        inverter = train_inverter(decoder, views, train_images.repeat(draws, 1, 1, 1),
                                  inversion_epochs, seed=seed)
        return invert(inverter, view.code())

    t = time.perf_counter()
    inverted = inversion(data.own_codes, data.own_images)
    n_own = len(data.own_images)
    row("learned inversion", None, inverted, t,
        f"decoder fine-tuned {inversion_epochs} epochs on {n_own} own faces x {draws} "
        f"random k_low views")
    t = time.perf_counter()
    code = reencode_forced(model, view, k, rounds, start=inverted)
    row("inversion + re-encode", code, decode_images(model, code), t,
        "the inversion's image re-encoded, the granted entries forced in")

    if data.held is not None and data.held_images is not None:
        t = time.perf_counter()
        assert data.held.seals is not None
        opened_by = seals_that_open(targets, view, data.held.seals)
        held_codes = data.held.authorized_code()
        inverted = inversion(torch.cat([data.own_codes, held_codes]),
                             torch.cat([data.own_images, data.held_images]))
        code = reencode_forced(model, view, k, rounds, start=inverted)
        decoded = decode_images(model, code)
        better = image_quality(inverted, images)[0] > image_quality(decoded, images)[0]
        row("key holder", None if better else code, inverted if better else decoded, t,
            f"holds {len(held_codes)} other full keys: they open {int(opened_by.sum())} of "
            f"{len(opened_by)} targets' records; inversion on own + held items"
            + (" (inversion alone was better)" if better else ", then re-encode"))
    return rows, out
