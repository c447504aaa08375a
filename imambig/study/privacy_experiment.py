"""A privacy experiment on an image store, the work behind ``imambig attack``.

The owner fits the noise model on training images and publishes held-out (test) images
with its secret; the attacker holds *every other* training image, which it ambiguates
itself through the public mechanism with secrets of its own (so it knows the labels of
its entries, and has as many releases of each as it likes), and attacks the owner's
records. Per k' a run reports:

- the single-release rows of the attack suite (``imambig.attacks``), the learned
  inversion among them, with the zero-information floor beside them (the random guess
  and the attacker's mean face);
- identity: who a face recognizer says is in the original, the authorized image, the
  public code decoded as is and every attacker's output (a gallery of other photos of
  the test identities);
- second releases: each target published a second time as a near-duplicate (or at the
  other precision, or under a fine-tuned or retrained model) and the two records
  compared by the second-release attacks;
- exact-photo linkage: can the holder of the exact photo find its record;
- the key size and a per-map KS test of real against fake values;
- lower-fidelity grantees (``config.k_lows``): per ``k_low``, the grantee attacks of
  :mod:`imambig.attacks.grantee` (one of them holding the full keys of other items), the
  grant's bytes, and what two grants of one photo filed under two names reveal together.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import ks_2samp

from imambig.access.secrets import Secret
from imambig.attacks.grantee import GranteeData, GrantView, run_grantee_attacks
from imambig.attacks.identity import Gallery
from imambig.attacks.linkage import link
from imambig.attacks.scoring import (
    AttackResult,
    decode_images,
    evaluate,
    guessed_code,
    image_quality,
)
from imambig.attacks.second_release import PairClassifier, intersect_scores
from imambig.attacks.suite import (
    attacker_ambiguation,
    attacker_secret,
    format_table,
    run_attacks,
)
from imambig.config import AttackConfig, TrainConfig, default_k_public
from imambig.evaluation import face_recognizer
from imambig.mechanism.ambiguation import ambiguate
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.grant_entries import entries_key_bytes, revealed_entries
from imambig.mechanism.keys import key_bound_bits, key_bytes
from imambig.mechanism.noise_model import NoiseModel, fit_noise_model
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder
from imambig.model.checkpoint import load_model
from imambig.model.precision import resolve
from imambig.stages.encode.images import bottlenecks
from imambig.stages.grant_decoder import find_grant_decoder, grant_codes
from imambig.stages.train import train
from imambig.stores.image_store import ImageStore, open_image_store
from imambig.stores.loader import to_tensor
from imambig.stores.location import Location
from imambig.study.near_duplicates import VARIANTS, NearDuplicates

BATCH = 64
KS_ALPHA = 0.01
FINETUNE_LR = 2e-4  # one epoch at a tenth of the training rate: a typical fine-tune


@dataclass
class GranteeRun:
    """The attacks of ``k_low`` grantees on their own grants (``recall`` holds the
    support overlap of the hidden real positions, see :mod:`imambig.attacks.grantee`)."""

    k_low: int
    grant_key_bytes: int  # the lower-fidelity key in the grant
    full_key_bytes: int
    two_names_revealed: float  # entries two grants of one photo reveal / one grant's
    grant_decoder: bool  # revealed with the owner's grant decoder (else the model's)
    results: list[AttackResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = [r.to_dict() for r in self.results]
        return d

    def markdown(self) -> str:
        own = self.results[0]
        best = max(self.results, key=lambda r: r.psnr or 0.0)
        return "\n".join([
            f"Grantee of k_low = {self.k_low}: key {self.grant_key_bytes} B (full key "
            f"{self.full_key_bytes} B); grant as is {own.psnr:.2f} dB, best attack "
            f"{best.name} {best.psnr:.2f} dB (+{best.psnr - own.psnr:.2f} dB); two grants of "
            f"one photo under two names reveal {self.two_names_revealed:.3f}x one grant's "
            "entries. The recall column is the support overlap of the hidden real "
            "positions (chance beside it).", "", format_table(self.results)])


@dataclass
class PrivacyRun:
    """Everything measured at one k'."""

    model_id: str
    k: int
    k_public: int
    precision: str
    key_bytes: int
    key_bound_bytes: float
    ks_pass_fraction: float  # maps whose real-vs-fake KS p-value exceeds KS_ALPHA
    results: list[AttackResult] = field(default_factory=list)
    second_release: list[AttackResult] = field(default_factory=list)
    linkage: dict[str, float] = field(default_factory=dict)  # top-1 among the targets
    identity_chance: float | None = None
    floor_psnr: float | None = None  # the better of the random guess and the mean face
    grantees: list[GranteeRun] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = [r.to_dict() for r in self.results]
        d["second_release"] = [r.to_dict() for r in self.second_release]
        d["grantees"] = [g.to_dict() for g in self.grantees]
        return d

    def markdown(self) -> str:
        out = [f"k' = {self.k_public} (k'/k = {self.k_public / self.k:g}), encoder "
               f"{self.precision}: key {self.key_bytes} B (bound {self.key_bound_bytes:.1f} B); "
               f"maps with KS p > {KS_ALPHA}: {self.ks_pass_fraction:.2f}; zero-information "
               f"floor {self.floor_psnr:.2f} dB"
               + ("" if self.identity_chance is None
                  else f"; identity chance {self.identity_chance:.3f}"),
               "", format_table(self.results)]
        if self.second_release:
            out += ["", "Second releases (the target's record A against a second record B of "
                    "the same image):", "", format_table(self.second_release)]
        for g in self.grantees:
            out += ["", g.markdown()]
        if self.linkage:
            out += ["", "Exact-photo linkage (top-1 among the targets' records): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in self.linkage.items())]
        return "\n".join(out)


def ks_pass_fraction(amb: Ambiguated, alpha: float = KS_ALPHA) -> float:
    """Per map, a two-sample KS test of real against fake public values."""
    v = amb.values.astype(np.float64)
    passed = [ks_2samp(v[:, m][amb.real[:, m]], v[:, m][~amb.real[:, m]]).pvalue > alpha
              for m in range(v.shape[1])]
    return float(np.mean(passed))


@dataclass(frozen=True)
class Split:
    fit: np.ndarray  # training images of the noise fit
    own: np.ndarray  # the attacker's own training images
    gallery: np.ndarray  # test images of the identity gallery (never attacked)
    targets: np.ndarray  # test images attacked


def split(store: ImageStore, config: AttackConfig) -> Split:
    rng = np.random.default_rng(config.seed)
    train_idx = rng.permutation(store.indices("train"))
    test = store.indices("test")
    if len(test) == 0:
        raise ValueError("the image store has no 'test' items to attack")
    if len(train_idx) <= config.fit_items:
        raise ValueError(f"the image store has {len(train_idx)} training items; the noise fit "
                         f"takes {config.fit_items} and the attacker needs some of its own")
    own = train_idx[config.fit_items :]
    if config.own_items:
        own = own[: config.own_items]
    gallery = np.zeros(0, dtype=np.int64)
    if config.identity:
        people = store.identities()[test]
        picks = [rng.permutation(test[people == p])[: config.gallery_per_identity]
                 for p in np.unique(people) if p >= 0]
        gallery = np.sort(np.concatenate(picks)) if picks else gallery
    rest = np.setdiff1d(test, gallery)
    targets = np.sort(rng.permutation(rest)[: config.target_items])
    return Split(np.sort(train_idx[: config.fit_items]), np.sort(own), gallery, targets)


@dataclass
class _Data:
    """What one experiment reads once: images, their bottlenecks, the people in them."""

    store: ImageStore
    split: Split
    x_targets: torch.Tensor
    x_own: torch.Tensor
    h_targets: torch.Tensor
    h_own: torch.Tensor
    people: np.ndarray  # identity of each target


def _noise(model: SparseAutoencoder, model_id: str, store: ImageStore, idx: np.ndarray,
           k_public: int, precision: str) -> NoiseModel:
    batches = (to_tensor(store.read(idx[s : s + BATCH])) for s in range(0, len(idx), BATCH))
    return fit_noise_model(model, model_id, batches, k_public, precision=precision)


def run_privacy_experiment(
    model_location: Location,
    images: Location,
    config: AttackConfig,
    log: Callable[[str], None] | None = None,
) -> list[PrivacyRun]:
    """One ``PrivacyRun`` per k' of ``config`` (default: the model's default k')."""
    say = log or (lambda _m: None)
    model, info, _ = load_model(model_location)
    c = model.config
    precision = resolve(config.precision)
    store = open_image_store(images)
    parts = split(store, config)
    x_t = to_tensor(store.read(parts.targets))
    x_own = to_tensor(store.read(parts.own))
    say(f"encoding {len(parts.targets)} targets and the attacker's {len(parts.own)} own "
        f"images ({precision})")
    data = _Data(store, parts, x_t, x_own,
                 bottlenecks(model, store.read(parts.targets), precision),
                 bottlenecks(model, store.read(parts.own), precision),
                 store.identities()[parts.targets])
    gallery = None
    if config.identity and len(parts.gallery) and face_recognizer.available():
        say(f"identity gallery: {len(parts.gallery)} photos of "
            f"{len(np.unique(store.identities()[parts.gallery]))} people")
        gallery = Gallery.build(face_recognizer.FaceRecognizer(), store.read(parts.gallery),
                                store.identities()[parts.gallery])
    elif config.identity:
        say("identity rows skipped: no gallery, or the face recognizer is not installed "
            "(pip install 'imambig[face]')")
    grant_decoders: dict[int, SparseAutoencoder | None] = {}
    for k_low in config.k_lows:
        found = find_grant_decoder(model_location, info.model_id, k_low)
        grant_decoders[k_low] = None if found is None else found[0]
        say(f"k_low={k_low} grants are revealed with "
            + (f"grant decoder {found[1]}" if found else
               "the model's own decoder (no grant decoder: `imambig train-grant-decoder`)"))
    seed = config.seed.to_bytes(4, "little")
    owner = Secret(hashlib.sha256(b"imambig experiment owner" + seed).digest())

    runs = []
    for k_public in config.k_publics or (default_k_public(c.k),):
        if k_public == c.k:
            raise ValueError(f"k' = k = {c.k} publishes no fakes, so there is nothing for the "
                             "attacks to tell apart (a seal alone shows the image); choose "
                             "k' > k")
        say(f"k'={k_public}: fitting the noise model on {len(parts.fit)} training images")
        noise = _noise(model, info.model_id, store, parts.fit, k_public, precision)
        target = ambiguate(model, data.h_targets, noise, DecoyMap.for_owner(noise, owner))
        releases = [attacker_ambiguation(model, noise, data.h_own,
                                         attacker_secret(config.seed, r))
                    for r in range(max(1, config.releases))]
        outcome = run_attacks(model, target, x_t, list(config.attacks), releases=releases,
                              own_images=x_own, seed=config.seed,
                              inversion_epochs=config.inversion_epochs, log=say)
        results = outcome.results
        mean_face = x_own.mean(0, keepdim=True).expand_as(x_t)
        psnr, ssim_ = image_quality(mean_face, x_t)
        results.append(AttackResult("mean face", None, None, None, None, psnr, ssim_,
                                    len(x_t), 0.0, "zero-information floor: the attacker's "
                                    "own faces averaged"))
        outcome.images["mean face"] = mean_face
        floor = max(r.psnr for r in results if r.name in ("random guess", "mean face")
                    and r.psnr is not None)
        run = PrivacyRun(
            model_id=info.model_id, k=c.k, k_public=k_public, precision=precision,
            key_bytes=key_bytes(c.n_maps, k_public, c.k),
            key_bound_bytes=key_bound_bits(c.n_maps, k_public, c.k) / 8,
            ks_pass_fraction=ks_pass_fraction(target), results=results, floor_psnr=floor)
        if gallery is not None:
            say("identity: the face recognizer on every reconstruction")
            run.identity_chance = gallery.chance
            identity_rows(run.results, outcome.images, x_t, data.people, gallery)
        if config.second_releases or config.second_model:
            run.second_release = _second_releases(model, info.model_id, noise, owner, target,
                                                  releases[0], data, config, precision,
                                                  model_location, images, say)
        if config.linkage:
            run.linkage = _linkage(model, target, data, precision)
        for k_low in config.k_lows:
            say(f"k_low={k_low}: grantee attacks")
            run.grantees.append(_grantee_run(model, noise, owner, target, data, config,
                                             precision, gallery, k_low,
                                             grant_decoders[k_low],
                                             say))
        runs.append(run)
    return runs


def _grantee_run(model: SparseAutoencoder, noise: NoiseModel, owner: Secret,
                 target: Ambiguated, data: _Data, config: AttackConfig, precision: str,
                 gallery: Gallery | None, k_low: int,
                 grant_decoder: SparseAutoencoder | None,
                 say: Callable[[str], None]) -> GranteeRun:
    c = model.config
    view = GrantView(*revealed_entries(target, k_low))
    # The same photos filed again under other names: records are a function of the
    # image, so the second grants are cut from a second encoding of the same images.
    again = ambiguate(model, data.h_targets, noise, DecoyMap.for_owner(noise, owner))
    second = revealed_entries(again, k_low)[0]
    two_names = float((view.mask | second).sum() / view.mask.sum())
    own_codes = torch.cat([grant_codes(model, data.x_own[s : s + BATCH])
                           for s in range(0, len(data.x_own), BATCH)])
    held_idx = data.split.fit[: config.key_holder_items]
    held = held_images = None
    if len(held_idx):
        h_held = bottlenecks(model, data.store.read(held_idx), precision)
        held = ambiguate(model, h_held, noise, DecoyMap.for_owner(noise, owner))
        held_images = decode_images(model, held.authorized_code())
    rows, images = run_grantee_attacks(
        model, view, target, data.x_targets,
        GranteeData(data.x_own, own_codes, held, held_images), c.k,
        grant_decoder=grant_decoder, draws=max(1, config.releases), inversion_epochs=config.inversion_epochs,
        seed=config.seed, log=say)
    if gallery is not None:
        for row in rows:
            row.identity_top1, row.identity_auc = gallery.identify(images[row.name],
                                                                   data.people)
    return GranteeRun(k_low, entries_key_bytes(c.n_maps, c.code_length, k_low),
                      key_bytes(c.n_maps, target.values.shape[-1], c.k), two_names,
                      grant_decoder is not None, rows)


def identity_rows(results: list[AttackResult], images: dict[str, torch.Tensor],
                  x_t: torch.Tensor, people: np.ndarray, gallery: Gallery) -> None:
    """Fill in the identity columns of ``results`` from what each row reconstructed
    (``images``), after an "original" row: the recognizer on the targets themselves."""
    original = AttackResult("original", None, None, None, None, None, None, len(x_t), 0.0,
                            "the recognizer on the target photos themselves")
    original.identity_top1, original.identity_auc = gallery.identify(x_t, people)
    results.insert(0, original)
    for row in results:
        if row.name in images:
            row.identity_top1, row.identity_auc = gallery.identify(images[row.name], people)


def identity_gallery(store: ImageStore, split_name: str, targets: np.ndarray,
                     per_identity: int = 5, seed: int = 0) -> Gallery | None:
    """A gallery of other photos of the targets' people from the same split (never a
    target), or None where the recognizer or identities are missing."""
    if not face_recognizer.available():
        return None
    people = store.identities()
    pool = np.setdiff1d(store.indices(split_name), targets)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(pool[people[pool] == p])[:per_identity]
             for p in np.unique(people[targets]) if p >= 0]
    picks = [p for p in picks if len(p)]
    if not picks:
        return None
    chosen = np.sort(np.concatenate(picks))
    return Gallery.build(face_recognizer.FaceRecognizer(), store.read(chosen), people[chosen])


# ---------------------------------------------------------------------------
# Second releases
# ---------------------------------------------------------------------------


@dataclass
class _Release:
    """How the owner (and the attacker, for its own pairs) encode the second record."""

    model: SparseAutoencoder
    noise: NoiseModel
    precision: str
    h_targets: torch.Tensor
    h_own: torch.Tensor
    note: str


def _second_releases(model: SparseAutoencoder, model_id: str, noise: NoiseModel,
                     owner: Secret, target: Ambiguated, own: Ambiguated, data: _Data,
                     config: AttackConfig, precision: str, model_location: Location,
                     images: Location, say: Callable[[str], None]) -> list[AttackResult]:
    pairs = slice(0, config.pair_items)
    near = NearDuplicates(data.store)
    own_idx = data.split.own[pairs]
    rows = []
    variants = list(config.second_releases) + (["retrained"] if config.second_model else [])
    for variant in variants:
        say(f"second release: {variant}")
        release = _release(variant, model, model_id, noise, data, near, own_idx, config,
                           precision, model_location, images)
        b = ambiguate(release.model, release.h_targets, release.noise,
                      DecoyMap.for_owner(release.noise, owner))
        own_b = attacker_ambiguation(release.model, release.noise, release.h_own,
                                     attacker_secret(config.seed, 0))
        own_a = own.items(pairs)
        identical = float(np.mean([np.array_equal(target.mask[i], b.mask[i])
                                   and np.array_equal(target.values[i], b.values[i])
                                   for i in range(len(b.mask))]))
        k = model.config.k
        scored = {
            "intersect": intersect_scores(target, b),
            "pair classifier": PairClassifier.fit(own_a, own_b, seed=config.seed).scores(target, b),
        }
        rows_by = {name: evaluate(variant, sc, target, k) for name, sc in scored.items()}
        best = max(rows_by, key=lambda name: rows_by[name].recall or 0.0)
        other = next(name for name in rows_by if name != best)
        row = rows_by[best]
        row.notes = (f"{release.note}; records identical {identical:.2f}; best of the two "
                     f"attacks: {best} (the {other}: recall {rows_by[other].recall:.3f})")
        decoded = decode_images(model, guessed_code(target, scored[best], k))
        row.psnr, row.ssim = image_quality(decoded, data.x_targets)
        rows.append(row)
    return rows


def _release(variant: str, model: SparseAutoencoder, model_id: str, noise: NoiseModel,
             data: _Data, near: NearDuplicates, own_idx: np.ndarray, config: AttackConfig,
             precision: str, model_location: Location, images: Location) -> _Release:
    """The second record's encoder and bottlenecks for ``variant``."""
    store = data.store
    if variant in VARIANTS:
        return _Release(
            model, noise, precision,
            bottlenecks(model, near.images(data.split.targets, variant), precision),
            bottlenecks(model, near.images(own_idx, variant), precision), VARIANTS[variant])
    if variant == "precision":
        other = "fp32" if precision == "bf16" else "bf16"
        return _Release(
            model, noise, other,
            bottlenecks(model, store.read(data.split.targets), other),
            bottlenecks(model, store.read(own_idx), other),
            f"encoded at {other} instead of {precision}")
    if variant == "finetune":
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(model=model.config, epochs=1, minutes=None, loss="bce", ema=0.0,
                              lr=FINETUNE_LR, warmup=0.0,
                              init=model_location.url, precision=precision,
                              checkpoint_every=0, seed=config.seed + 1)
            train(images, Location(tmp), cfg, progress=False)
            second, info, _ = load_model(Location(tmp))
        note = f"under model {info.model_id}, fine-tuned one epoch from {model_id}"
    elif variant == "retrained":
        assert config.second_model is not None
        second, info, _ = load_model(Location(config.second_model,
                                              model_location.storage_options))
        if second.config != model.config:
            raise ValueError(f"--second-model {config.second_model} has another shape")
        note = f"under model {info.model_id}, trained from scratch"
    else:
        raise ValueError(f"unknown second release {variant!r}")
    second_noise = _noise(second, info.model_id, store, data.split.fit, noise.k_public,
                          precision)
    return _Release(second, second_noise, precision,
                    bottlenecks(second, store.read(data.split.targets), precision),
                    bottlenecks(second, store.read(own_idx), precision), note)


def _linkage(model: SparseAutoencoder, target: Ambiguated, data: _Data,
             precision: str) -> dict[str, float]:
    """Top-1 of finding each target's record from its photo, and from a JPEG copy."""
    truth = np.arange(len(target.mask))
    near = NearDuplicates(data.store)
    return {"exact photo": link(model, data.x_targets, target, truth),
            "JPEG q90 copy": link(model, to_tensor(near.images(data.split.targets, "jpeg90")),
                                  target, truth)}


def to_json(runs: list[PrivacyRun]) -> str:
    return json.dumps({"runs": [r.to_dict() for r in runs]}, indent=2)
