"""The owner's noise fit of a model: made once, bound to its owner when it is made.

A noise fit (``imambig.mechanism.noise_model``) is stored in the model folder, which
others may be able to write (a shared disk, the bucket a model is published from). A
fit found there used to be trusted, so a fit planted or swapped in before the model's
first publication drew every fake from a stranger's statistics. Now a fit is used only
as the owner's own:

- its name carries a fingerprint of the owner secret
  (``noise_d<design>_k<k'>_<precision>_<owner>.npz``): a file planted before the owner's
  first fit is never looked at, and two owners of one model folder never share a fit;
- beside it, ``<name minus .npz>.fit.json`` records its SHA-256, model, k', precision and
  design with an HMAC under a key only the owner secret gives
  (``imambig.access.secrets.noise_fit_key``), written when the fit is made: a swapped or
  edited file, or the record of another owner or model, is refused (``TamperedError``);
- a fit named the earlier way (no owner in the name, no record) is adopted only where
  the model's release record under the owner's key root names its digest: the fit the
  model was already published with.

A fit is made in memory; :meth:`NoiseFit.save` writes it (file, then record) only once
an encode has passed every check, so a refused encode leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from imambig.access.secrets import Secret, noise_fit_key
from imambig.config import ModelConfig
from imambig.errors import FormatError, TamperedError
from imambig.mechanism.noise_model import NOISE_DESIGN, NoiseModel, file_limit, fit_noise_model
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stores.location import Location
from imambig.untrusted import parse_json

FIT_FORMAT = "imambig.noise-fit/1"
RECORD_LIMIT = 64 << 10  # a record is some 400 bytes
# The names a store's attributes may give a fit: a file of the model folder, no path.
FILE_NAME = re.compile(r"noise_d[0-9]{1,9}_k[0-9]{1,9}_[a-z0-9]{1,16}(_[0-9a-f]{16})?\.npz\Z")


def file_name(k_public: int, precision: str, owner: Secret | None) -> str:
    """The fit's file name; without ``owner``, the earlier, unbound name."""
    base = f"noise_d{NOISE_DESIGN}_k{k_public}_{precision}"
    if owner is None:
        return f"{base}.npz"
    return f"{base}_{owner.fingerprint('imambig/noise-fit-name/v1')}.npz"


def record_name(name: str) -> str:
    return name.removesuffix(".npz") + ".fit.json"


@dataclass(frozen=True)
class NoiseFit:
    """One fit of a model for (k', precision): its bytes and where they belong."""

    folder: Location  # the model folder
    name: str
    data: bytes = field(repr=False)
    model_id: str
    k_public: int
    precision: str
    saved: bool  # file and record are in the model folder already

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def location(self) -> Location:
        return self.folder.join(self.name)

    def attrs(self) -> dict[str, str]:
        """What a store version records of its fit (its ``noise_fit`` attribute)."""
        return {"file": self.name, "sha256": self.sha256, "precision": self.precision}

    def record(self, owner: Secret) -> bytes:
        body = {"format": FIT_FORMAT, "file": self.name, "sha256": self.sha256,
                "model_id": self.model_id, "k_public": self.k_public,
                "precision": self.precision, "noise_design": NOISE_DESIGN}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        mac = hmac.new(noise_fit_key(owner, self.model_id), text.encode(), hashlib.sha256)
        return json.dumps({**body, "mac": mac.hexdigest()}, indent=1).encode()

    def save(self, owner: Secret) -> None:
        """Write the fit and then its record (the record last: a fit without one is
        never used)."""
        if not self.saved:
            self.location.write_bytes(self.data)
            self.folder.join(record_name(self.name)).write_bytes(self.record(owner))

    def verify(self, owner: Secret) -> None:
        """``TamperedError`` unless the record beside the fit is this owner's record of
        exactly these bytes, for this model, k', precision and design."""
        where = self.folder.join(record_name(self.name))
        raw = where.read_bytes(limit=RECORD_LIMIT)
        advice = (f"remove {self.location} and {where} to fit again (a model already "
                  "published must keep its first fit: restore that one)")
        if raw is None:
            raise TamperedError(f"noise fit {self.location} has no record of the owner's fit "
                                f"({where.name}): not made by this owner's encode, or "
                                f"interrupted; {advice}")
        try:
            doc = parse_json(raw, f"noise fit record {where}", RECORD_LIMIT)
        except FormatError as exc:
            raise TamperedError(f"{exc}; {advice}") from None
        theirs = doc.get("mac") if isinstance(doc, dict) else None
        ours = json.loads(self.record(owner))["mac"]
        if not isinstance(theirs, str) or not hmac.compare_digest(theirs, ours):
            raise TamperedError(f"noise fit {self.location} is not the one its owner fitted "
                                f"(swapped, edited, or another owner's or model's record "
                                f"{where.name}); {advice}")

    def model(self, config: ModelConfig) -> NoiseModel:
        return NoiseModel.from_bytes(self.data, config, str(self.location))


def find(folder: Location, model_id: str, config: ModelConfig, k_public: int,
         precision: str, owner: Secret, released_sha256: str | None = None
         ) -> NoiseFit | None:
    """The owner's verified fit, or None when there is none yet. ``released_sha256``:
    the digest of the fit the model was published with under the owner's key root, by
    which a fit of the earlier, unbound name is adopted."""
    name = file_name(k_public, precision, owner)
    limit = file_limit(config)
    data = folder.join(name).read_bytes(limit=limit)
    if data is not None:
        fit = NoiseFit(folder, name, data, model_id, k_public, precision, saved=True)
        fit.verify(owner)
        fit.model(config)  # parses: a malformed fit is refused before any work
        return fit
    if released_sha256 is not None:
        old = folder.join(file_name(k_public, precision, None)).read_bytes(limit=limit)
        if old is not None and hashlib.sha256(old).hexdigest() == released_sha256:
            fit = NoiseFit(folder, name, old, model_id, k_public, precision, saved=False)
            fit.model(config)
            return fit
    return None


def fit(folder: Location, model: SparseAutoencoder, model_id: str,
        batches: Iterable[torch.Tensor], k_public: int, precision: str,
        owner: Secret) -> NoiseFit:
    """A new fit, in memory (``NoiseFit.save`` stores it)."""
    noise = fit_noise_model(model, model_id, batches, k_public, precision=precision)
    return NoiseFit(folder, file_name(k_public, precision, owner), noise.to_bytes(),
                    model_id, k_public, precision, saved=False)


def load_published(folder: Location, noise_fit: object, config: ModelConfig) -> NoiseModel:
    """The fit a store version names (its ``noise_fit`` attribute, from storage others
    may write): a file of ``folder`` by a fit's name, whose bytes have the recorded
    digest (``TamperedError`` otherwise), parsed for ``config``'s model."""
    named = noise_fit if isinstance(noise_fit, dict) else {}
    name = named.get("file")
    if not isinstance(name, str) or not FILE_NAME.match(name):
        raise FormatError(f"the store names no noise fit file of {folder} ({noise_fit!r:.120})")
    location = folder.join(name)
    data = location.read_bytes(limit=file_limit(config))
    if data is None:
        raise FileNotFoundError(f"no noise fit at {location}")
    if hashlib.sha256(data).hexdigest() != named.get("sha256"):
        raise TamperedError(f"noise fit {location} is not the one the store was encoded with")
    return NoiseModel.from_bytes(data, config, str(location))
