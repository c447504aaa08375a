"""What a worker is given of the owner's secrets to encode regions: derived keys only.

The driver holds the owner secret, the keystore key and the signing key; a worker that
encodes regions of one store version needs three things derived from the first two,
and nothing else:

- the decoy seed and the seal key of the model (HMACs of the owner secret,
  ``imambig.access.secrets``), which build the owner's decoy map;
- the data key of the version's keystore (unwrapped by the driver's key provider),
  which seals the keystore rows and names items (opaque ids).

``RegionKeys`` carries them as a task argument, over the cluster's TLS connections
(``imambig.stages.encode.dask_cluster``), never through an environment. A worker that leaks
them leaks one model's decoys and seals and one keystore version, not the owner secret
(every model, every future release), the keystore key (every keystore) or the signing
key (which never leaves the driver).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from imambig.access.key_provider import DataKeyProvider, KeyProvider
from imambig.access.keystore import Keystore
from imambig.access.secrets import Secret, Secrets, decoy_seed, seal_key
from imambig.mechanism.decoy_map import DecoyMap
from imambig.mechanism.noise_model import NoiseModel
from imambig.stores.location import Location


class RegionKeys:
    """The derived keys for one model and one keystore; their repr and str never show
    them. Equal keys hash alike (by a keyed fingerprint, not the bytes), so a worker
    builds its decoy map once per model and owner."""

    __slots__ = ("_data_key", "_fingerprint", "_seal", "_seed", "_wrapped", "model_id")

    def __init__(self, model_id: str, seed: Secret, seal: Secret, data_key: Secret,
                 wrapped: bytes) -> None:
        self.model_id = model_id
        self._seed, self._seal, self._data_key = seed, seal, data_key
        self._wrapped = bytes(wrapped)
        # Safe to show and hash: an HMAC under the seed of the other parts' digests.
        digest = hashlib.sha256(seal.reveal() + data_key.reveal() + self._wrapped).digest()
        self._fingerprint = hmac.new(seed.reveal(), b"imambig/region-keys/v1\0" + digest,
                                     hashlib.sha256).hexdigest()[:16]

    @classmethod
    def derive(cls, secrets: Secrets, provider: KeyProvider, model_id: str,
               keystore: Location) -> RegionKeys:
        """In the driver: the keys for writing regions of the (authenticated) keystore at
        ``keystore``, whose data key ``provider`` unwraps."""
        attrs = Keystore.open(keystore, provider).attrs  # checks the attributes' MAC
        wrapped = base64.b64decode(attrs["wrapped_data_key"], validate=True)
        owner = secrets.owner_secret
        return cls(model_id, Secret(decoy_seed(owner, model_id)),
                   Secret(seal_key(owner, model_id)), Secret(provider.unwrap(wrapped)), wrapped)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def decoy_map(self, noise: NoiseModel) -> DecoyMap:
        """The owner's decoy map for the noise fit (of this model)."""
        if noise.model_id != self.model_id:
            raise ValueError(f"keys for model {self.model_id}, noise fit of {noise.model_id}")
        return DecoyMap.from_seeds(noise, self._seed, self._seal)

    def key_provider(self) -> DataKeyProvider:
        """Opens this keystore only."""
        return DataKeyProvider(self._data_key, self._wrapped)

    def __repr__(self) -> str:
        return f"RegionKeys(model_id={self.model_id!r}, fingerprint={self._fingerprint!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegionKeys):
            return NotImplemented
        return hmac.compare_digest(self._fingerprint, other._fingerprint) and (
            self._seed == other._seed and self._seal == other._seal
            and self._data_key == other._data_key and self._wrapped == other._wrapped)

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __dask_tokenize__(self) -> str:
        # Dask names tasks by a hash of their arguments: the fingerprint, never the keys.
        return self._fingerprint

    def __getstate__(self) -> tuple:
        # Travels only as a task argument, over the cluster's TLS connections.
        return (self.model_id, self._seed.reveal(), self._seal.reveal(),
                self._data_key.reveal(), self._wrapped)

    def __setstate__(self, state: tuple) -> None:
        model_id, seed, seal, data_key, wrapped = state
        self.__init__(model_id, Secret(seed), Secret(seal), Secret(data_key), wrapped)  # type: ignore[misc]
