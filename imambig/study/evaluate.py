"""Evaluation of encoded stores: what authorized users get, what everyone else gets, and
what it costs in stored bytes.

Reads the real artefacts (image store, public store, keystore), so the numbers describe
what was published, not a re-computation. Rates are honest: bits per pixel = bytes
actually stored x 8 / (H x W), for the public record, the key, and what an authorized
user needs (key + the true values).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from imambig.access.key_provider import KeyProvider
from imambig.access.keystore import Keystore
from imambig.attacks.grantee import GranteeData, GrantView, run_grantee_attacks
from imambig.attacks.identity import Gallery
from imambig.attacks.linkage import link
from imambig.attacks.registry import ATTACKS
from imambig.attacks.suite import attacker_ambiguation, attacker_secret, run_attacks
from imambig.config import EvaluateConfig
from imambig.errors import FormatError
from imambig.evaluation import rate_distortion as rd
from imambig.evaluation.grid import comparison_grid
from imambig.evaluation.metrics import ms_ssim_scales
from imambig.mechanism.grant_entries import entries_key_bytes, revealed_entries
from imambig.mechanism.keys import stored_records
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import load_model
from imambig.stages.encode.images import bottlenecks
from imambig.stages.encode.noise_fit import load_published
from imambig.stages.grant_decoder import find_grant_decoder, grant_codes
from imambig.stores.image_store import ImageStore, open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location
from imambig.stores.public_store import PublicStore
from imambig.study.near_duplicates import NearDuplicates
from imambig.study.privacy_experiment import identity_gallery, identity_rows
from imambig.untrusted import parse_json

EVALUATION_LIMIT = 64 << 20  # rows, tables and curves: a few hundred kB


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]  # the attack suite's rows (and its two reference rows)
    rates: dict[str, float]
    n_items: int
    split: str
    model_id: str
    settings: dict[str, Any] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)  # Table-1 style rows
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (bpp, PSNR)
    # Exact-photo linkage: top-1 of finding each item's record among the evaluated ones
    # from its photo (and from a JPEG copy), the documented limit of deterministic codes.
    linkage: dict[str, float] = field(default_factory=dict)

    def table_markdown(self) -> str:
        """The paper's Table 1 shape: settings with PSNR, SSIM, MS-SSIM and honest rates."""
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        head = ("| setting | PSNR (dB) | SSIM | MS-SSIM | identity top-1 | bytes/image | bpp "
                "| notes |\n|---|---|---|---|---|---|---|---|\n")
        return head + "".join(
            f"| {r['name']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {fmt(r.get('ms_ssim'), '.3f')} "
            f"| {fmt(r.get('identity_top1'), '.3f')} "
            f"| {fmt(r.get('bytes_per_image'), '.0f')} | {fmt(r.get('bpp'), '.3f')} "
            f"| {r.get('notes', '')} |\n" for r in self.table)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, out: Location) -> None:
        """``evaluation.json`` and ``evaluation.md`` in folder ``out``."""
        out.join("evaluation.json").write_bytes(self.to_json().encode())
        out.join("evaluation.md").write_bytes(self.markdown().encode())

    def markdown(self) -> str:
        head = ("| setting | PSNR (dB) | SSIM | support recall | chance | AUC | identity top-1 "
                "| identity AUC |\n|---|---|---|---|---|---|---|---|\n")
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        body = "".join(
            f"| {r['name']} | {fmt(r['psnr'], '.2f')} | {fmt(r['ssim'], '.3f')} | "
            f"{fmt(r['recall'], '.3f')} | {fmt(r['chance'], '.3f')} | {fmt(r['auc'], '.3f')} | "
            f"{fmt(r.get('identity_top1'), '.3f')} | {fmt(r.get('identity_auc'), '.3f')} |\n"
            for r in self.rows)
        rates = "".join(f"| {k} | {v:.3f} |\n" for k, v in self.rates.items())
        table = f"{self.table_markdown()}\n" if self.table else ""
        linkage = "".join(f"Exact-photo linkage, {k}: top-1 {v:.3f}\n"
                          for k, v in self.linkage.items())
        return (f"{table}{head}{body}\n| rate | value |\n|---|---|\n{rates}\n{linkage}"
                f"{self.n_items} {self.split} items, model `{self.model_id}`.\n")


CONTRAST_DB = 8.0  # what a glance at a grid tells apart: a face from a blur or noise


def contrast_table(evaluation: dict[str, Any]) -> str:
    """The rows a glance at the grid compares, from an ``evaluation.json`` dict: the
    authorized image against the public code and every attacker's output, with the
    margin over the best of them."""
    rows = {r["name"]: r for r in evaluation["rows"] if r.get("psnr") is not None}
    if "authorized" not in rows:
        raise ValueError("the evaluation has no authorized row")
    auth = rows.pop("authorized")["psnr"]
    lines = ["| reconstruction | PSNR (dB) | below authorized (dB) |", "|---|---|---|",
             f"| authorized | {auth:.2f} | – |"]
    lines += [f"| {name} | {r['psnr']:.2f} | {auth - r['psnr']:.2f} |"
              for name, r in rows.items()]
    if rows:
        best = max(rows, key=lambda n: rows[n]["psnr"])
        margin = auth - rows[best]["psnr"]
        verdict = "holds" if margin >= CONTRAST_DB else "does NOT hold"
        lines += ["", f"authorized is {margin:.2f} dB above the best other column ({best}); "
                      f"the {CONTRAST_DB:.0f} dB contrast {verdict}"]
    ran = evaluation.get("settings", {}).get("attacks")
    if ran is not None and (left := sorted(set(ATTACKS) - set(ran))):
        lines.append(f"attacks not run in this evaluation: {', '.join(left)} "
                     "(imambig evaluate --attacks runs any of them)")
    return "\n".join(lines)


def _stored_bytes(store: Location, names: tuple[str, ...]) -> int:
    fs, path = store.filesystem()
    return sum(sum(fs.du(f"{path}/{n}", total=False).values()) for n in names)


def _grant_rows(net: SparseAutoencoder, amb: Ambiguated, x: torch.Tensor,
                own_images: torch.Tensor, config: EvaluateConfig, say: Callable[[str], None],
                gallery: Gallery | None, people: np.ndarray,
                grant_decoders: Callable[[int], SparseAutoencoder | None]
                ) -> list[dict[str, Any]]:
    """One row per lower-fidelity grant: what its grantee reveals (the entries in the
    grant, decoded as reveal does) and its size, beside the best of the grantee attacks
    on it."""
    c = net.config
    rows = []
    own_codes = None
    if config.grantee_attacks:
        own_codes = torch.cat([grant_codes(net, own_images[s : s + 64])
                               for s in range(0, len(own_images), 64)])
    for fraction in config.grant_fractions:
        k_low = max(1, round(c.k * fraction))
        say(f"lower-fidelity grant k_low={k_low}")
        grant_decoder = grant_decoders(k_low)
        decoder = net if grant_decoder is None else grant_decoder
        view = GrantView(*revealed_entries(amb, k_low))
        p, s, ms = rd.quality(decoder, view.code(), x)
        size = entries_key_bytes(c.n_maps, c.code_length, k_low)
        row: dict[str, Any] = {
            "name": f"grant k_low={k_low}", "psnr": float(p.mean()), "ssim": float(s.mean()),
            "ms_ssim": float(ms.mean()), "identity_top1": None, "bytes_per_image": size,
            "bpp": size * 8 / (x.shape[2] * x.shape[3]),
            "notes": "the grant's own entries decoded with the "
                     + ("grant decoder" if grant_decoder is not None else "model's decoder")
                     + " (the grant alone: no public record)"}
        if own_codes is not None:
            found, images = run_grantee_attacks(
                net, view, amb, x, GranteeData(own_images, own_codes), c.k,
                grant_decoder=grant_decoder, draws=max(1, config.releases), log=say)
            best = max(found[1:], key=lambda r: r.psnr or 0.0)
            row["best_grantee_attack"] = {"name": best.name, "psnr": best.psnr,
                                          "ssim": best.ssim, "support_overlap": best.recall,
                                          "chance": best.chance}
            row["notes"] += (f"; best grantee attack: {best.name} {best.psnr:.2f} dB "
                             f"(+{best.psnr - row['psnr']:.2f} dB)")
            if gallery is not None:
                row["identity_top1"] = gallery.identify(images[found[0].name], people)[0]
                row["best_grantee_attack"]["identity_top1"] = gallery.identify(
                    images[best.name], people)[0]
        rows.append(row)
    return rows


@dataclass
class _Published:
    """The evaluated items as published, read back: the model, the stores, the items'
    records and the images they were made from."""

    net: SparseAutoencoder
    model_id: str
    model: Location
    store: ImageStore
    pub: PublicStore
    ks: Keystore
    target: np.ndarray  # the evaluated items' image-store indices
    amb: Ambiguated  # their records, as stored
    x: torch.Tensor  # their images
    own: np.ndarray  # the attacker's own images: training items

    @property
    def people(self) -> np.ndarray:
        return self.store.identities()[self.target]


def _read_published(images: Location, model: Location, public: Location,
                    keystore: Location, provider: KeyProvider,
                    config: EvaluateConfig) -> _Published:
    """Open the stores, refuse ones that do not belong together, and read the records of
    the evaluated split's first ``config.max_items`` items."""
    net, info, _ = load_model(model)
    store = open_image_store(images)
    pub = PublicStore.open(public)
    ks = Keystore.open(keystore, provider)
    if pub.attrs["model_id"] != info.model_id:
        raise ValueError(f"{public} was encoded with model {pub.attrs['model_id']}, "
                         f"not {info.model_id}")
    ids = store.item_ids()
    target = store.indices(config.split)[: config.max_items]
    if len(target) == 0:
        raise ValueError(f"the image store has no {config.split!r} items")
    names = [str(i) for i in ids[target]]
    ks.check_public(pub)
    # Items keep their image-store position in the public store; the sealed slots say
    # whether the item there is the one named (the public ``item_id`` array is not read).
    pidx = np.asarray(target, dtype=np.int64)
    slots = ks.entries(pidx)
    if moved := [n for n, o, s in zip(names, ks.opaque_ids(names), slots, strict=True)
                 if s.item_id != o]:
        raise ValueError(f"{len(moved)} items are not where {public} has them: {moved[:5]}")
    mask, values = pub.read(pidx)
    amb = stored_records(mask, values, [s.key for s in slots])
    return _Published(net, info.model_id, model, store, pub, ks, target, amb,
                      to_tensor(store.read(target)),
                      store.indices("train")[: config.attacker_items])


def _attack_rows(p: _Published, config: EvaluateConfig, log: Callable[[str], None] | None,
                 say: Callable[[str], None]) -> tuple[list[dict[str, Any]], Gallery | None]:
    """The attack suite's rows (with the face recognizer's, where it runs), by an
    attacker that ambiguates its own images with the published noise fit; and the
    recognizer's gallery."""
    # The store names its fit: a file of the model folder with the digest it records.
    noise = load_published(p.model, p.pub.attrs.get("noise_fit"), p.net.config)
    precision = str(p.pub.attrs["noise_fit"].get("precision", "fp32"))
    h_own = bottlenecks(p.net, p.store.read(p.own), precision)
    releases = [attacker_ambiguation(p.net, noise, h_own, attacker_secret(0, r))
                for r in range(max(1, config.releases))]
    outcome = run_attacks(p.net, p.amb, p.x, list(config.attacks), releases=releases,
                          own_images=to_tensor(p.store.read(p.own)), log=log)
    gallery = identity_gallery(p.store, config.split, p.target) if config.identity else None
    if gallery is not None:
        say("identity: the face recognizer on every reconstruction")
        identity_rows(outcome.results, outcome.images, p.x, p.people, gallery)
    return [r.to_dict() for r in outcome.results], gallery


def _grid(p: _Published, k: int, items: int) -> bytes:
    """``grid.png``: the first ``items`` images, authorized and public, beside the
    attacker's column: a random guess, the paper's attack (the trained attacks do no
    better on this design; see the table)."""
    rng = np.random.default_rng(0)
    g = p.amb.real[:items]
    scores = rng.random(g.shape)
    top = np.argsort(-scores, -1)[..., :k]
    guess = np.zeros_like(g)
    np.put_along_axis(guess, top, True, -1)
    return comparison_grid(p.net, p.x[:items], p.amb.items(slice(0, items)), guess)


def _quality_table(p: _Published, k: int, rows: list[dict[str, Any]], gallery: Gallery | None,
                   config: EvaluateConfig, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Table 1: authorized reconstructions (k/2 and k), the lower-fidelity grants, the
    codecs at the authorized standalone bytes, and the attack suite's public rows."""
    table: list[dict[str, Any]] = []
    alone = None
    for k_low in (k // 2, k):
        say(f"authorized reconstructions, k={k_low}")
        with_key, alone = rd.authorized(p.net, p.amb, p.x, k_low)
        table += [asdict(with_key), asdict(alone)]
    assert alone is not None

    def grant_decoder(k_low: int) -> SparseAutoencoder | None:
        found = find_grant_decoder(p.model, p.model_id, k_low)
        return None if found is None else found[0]

    table += _grant_rows(p.net, p.amb, p.x, to_tensor(p.store.read(p.own)), config, say,
                         gallery, p.people, grant_decoder)
    budgets = [alone.bytes_per_image] * len(p.x)
    for codec in config.codecs:
        say(f"{codec} at the authorized k={k} standalone bytes")
        table.append(asdict(rd.codec_at_bytes(p.x, codec, budgets)))
    by_name = {r["name"]: r for r in rows}
    if "authorized" in by_name:  # the suite's authorized row decodes the same k=k code
        for row in table:
            if row["name"] == f"authorized k={k}":
                row["identity_top1"] = by_name["authorized"].get("identity_top1")
    for name in ("public as is", "random guess"):
        if name in by_name:
            r = by_name[name]
            table.append({"name": name, "psnr": r["psnr"], "ssim": r["ssim"], "ms_ssim": None,
                          "identity_top1": r.get("identity_top1"), "bytes_per_image": None,
                          "bpp": None, "notes": "from the attack suite"})
    return table


def _linkage(p: _Published, say: Callable[[str], None]) -> dict[str, float]:
    """Top-1 of finding each item's record from its exact photo, and from a JPEG copy."""
    say("exact-photo linkage")
    exact = link(p.net, p.x, p.amb, np.arange(len(p.x)))
    jpeg = to_tensor(NearDuplicates(p.store).images(p.target, "jpeg90"))
    return {"exact photo": exact, "JPEG q90 copy": link(p.net, jpeg, p.amb, np.arange(len(p.x)))}


def _rd_curves(p: _Published, config: EvaluateConfig, out: Location,
               say: Callable[[str], None]) -> dict[str, list[tuple[float, float]]]:
    """Rate-distortion curves on the first ``config.rd_items`` items (ours and the
    codecs'), plotted to ``rd.png`` in ``out``."""
    n_rd = config.rd_items
    say(f"rate-distortion curves on {min(n_rd, len(p.x))} items")
    sub_x = p.x[:n_rd]
    curves = rd.our_curves(p.net, p.amb.items(slice(0, n_rd)), sub_x)
    for codec in config.codecs:
        curves[codec.upper()] = rd.codec_curve(sub_x, codec)
    title = (f"{len(sub_x)} {config.split} images, {p.x.shape[2]}x{p.x.shape[3]}, "
             f"model {p.model_id[:12]}")
    out.join("rd.png").write_bytes(rd.plot_rd(curves, title))
    return curves


def _rates(pub: PublicStore, ks: Keystore) -> dict[str, float]:
    """Bytes actually stored per image, and bits per pixel, of the public record, the
    key, and what an authorized user needs."""
    hw = pub.attrs["image_height"] * pub.attrs["image_width"]
    n = pub.n_items
    public_bytes = _stored_bytes(pub.location, ("support", "values")) / n
    key_bytes = ks.key_bytes
    # An authorized user needs the key and the true values (k per map) at the stored
    # precision: the k real of the k' public values, at their share of the stored bytes.
    true_value_bytes = (_stored_bytes(pub.location, ("values",)) / n
                        * pub.attrs["k"] / pub.attrs["k_public"])
    return {
        "public record bytes/image": public_bytes,
        "public record bpp": public_bytes * 8 / hw,
        "key bytes/image": float(key_bytes),
        "key bpp": key_bytes * 8 / hw,
        "authorized (key + true values) bpp": (key_bytes + true_value_bytes) * 8 / hw,
    }


def evaluate_stores(
    images: Location,
    model: Location,
    public: Location,
    keystore: Location,
    provider: KeyProvider,
    config: EvaluateConfig,
    *,
    out: Location | None = None,
    log: Callable[[str], None] | None = None,
) -> Evaluation:
    """Read the stores and measure: Table-1 rows (authorized k=k/2 and k, the codecs at
    the authorized standalone bytes of each image), the attack rows and the rates; with
    ``out``, write ``grid.png`` and (unless ``config.rd_items`` is 0) the
    rate-distortion plot ``rd.png`` there (on the first ``rd_items`` items)."""
    say = log or (lambda _m: None)
    # no torch.no_grad() here: the learned attacks train their own classifiers
    p = _read_published(images, model, public, keystore, provider, config)
    rows, gallery = _attack_rows(p, config, log, say)
    k = int(p.pub.attrs["k"])
    if out is not None:
        out.join("grid.png").write_bytes(_grid(p, k, config.grid_items))
    table = _quality_table(p, k, rows, gallery, config, say)
    linkage = _linkage(p, say) if config.linkage else {}
    curves = _rd_curves(p, config, out, say) if out is not None and config.rd_items else {}
    settings = {"attacker_items": len(p.own), "attacks": list(config.attacks),
                "codecs": list(config.codecs),
                "ssim": "11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 255",
                "ms_ssim_scales": ms_ssim_scales(p.x.shape[2], p.x.shape[3])}
    return Evaluation(rows, _rates(p.pub, p.ks), len(p.target), config.split, p.model_id,
                      settings, table, curves, linkage)


def as_table(ev: Evaluation) -> list[dict[str, Any]]:
    """Rows for a table artifact: one per setting, rounded."""
    out = []
    for r in ev.rows:
        out.append({k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in r.items() if k in ("name", "psnr", "ssim", "recall", "chance",
                                                   "auc", "n_items")})
    return out


def load_evaluation(text: str) -> Evaluation:
    doc = parse_json(text, "evaluation", EVALUATION_LIMIT)
    if not isinstance(doc, dict):
        raise FormatError("an evaluation is a JSON object")
    try:
        return Evaluation(**doc)
    except TypeError:  # fields it does not have, or lacks
        raise FormatError("not an evaluation: its fields differ") from None


__all__ = ["Evaluation", "as_table", "evaluate_stores", "load_evaluation"]
