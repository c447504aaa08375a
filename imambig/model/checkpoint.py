"""Model checkpoints at any location: safetensors for tensors, JSON for everything else.

Two files live in a checkpoint folder, both `safetensors
<https://huggingface.co/docs/safetensors>`_ (a JSON header, then raw little-endian
tensor bytes; loading one never runs code, unlike a pickle):

- ``state.safetensors``: everything needed to resume training (model, optimizer and
  average weights, RNG states) as tensors, and the rest (position in the epoch, config,
  history, optimizer settings) as a JSON tree in the header's metadata. Rewritten
  atomically during training.
- ``model.safetensors``: the published model: weights, and in the header's metadata
  the format, config, metadata, extras and ``model_id``: the SHA-256 of the config and
  the weights. The model id keys everything derived from the model (stores, noise fits,
  grants), so identical weights give identical ids.

A model file usually comes from storage somebody else could write (a user reveals with
the owner's published model), so :func:`load_model` parses the header itself, recomputes
the model id from the raw bytes and compares it with the one expected (a signed grant's)
*before* a single tensor is built. Pickled checkpoints (``model.pt``, ``state.pt``) of
earlier versions are refused; :func:`convert_legacy` turns one's own into the new format.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch

from imambig.config import ModelConfig
from imambig.errors import ModelFormatError, TamperedError
from imambig.model.autoencoder import SparseAutoencoder
from imambig.stores.location import Location
from imambig.untrusted import parse_json

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
PROGRESS_FILE = "progress.json"
LEGACY_MODEL_FILE = "model.pt"
LEGACY_STATE_FILE = "state.pt"
MODEL_FORMAT = "imambig.model/2"
STATE_FORMAT = "imambig.train-state/2"
MAX_HEADER_BYTES = 16 << 20  # safetensors' own limit is 100 MB; ours are a few kB
MAX_FILE_BYTES = 4 << 30
MAX_DIMS = 8  # a tensor's rank; ours have at most 4
MAX_DIM = 1 << 40  # one dimension; checked before any product of them is taken

# safetensors dtype -> (torch dtype, bytes per element)
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


def _hash_tensor(h: Any, name: str, dtype: torch.dtype, shape: tuple[int, ...],
                 raw: bytes | memoryview) -> None:
    h.update(name.encode())
    h.update(str(dtype).encode())
    h.update(str(tuple(shape)).encode())
    h.update(raw)


def _config_digest(config: ModelConfig) -> Any:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())


def model_id(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of config and weights (16 hex digits)."""
    h = _config_digest(config)
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        _hash_tensor(h, name, t.dtype, tuple(t.shape),
                     t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------
# The safetensors header, parsed strictly before anything else is read
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


def _header(data: bytes, what: str) -> tuple[dict[str, _Entry], dict[str, str]]:
    """Tensor table and metadata of a safetensors file; every offset checked, so the
    entries cover the data exactly once (what is hashed is what is loaded)."""
    if len(data) < 8:
        raise ModelFormatError(f"{what} is truncated ({len(data)} bytes)")
    (n,) = struct.unpack_from("<Q", data)
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ModelFormatError(f"{what}: header of {n} bytes does not fit the file")
    try:
        doc = parse_json(bytes(data[8 : 8 + n]), "its header", MAX_HEADER_BYTES,
                         ModelFormatError)
    except ModelFormatError as exc:  # bad UTF-8 or JSON, or nested past the recursion limit
        raise ModelFormatError(f"{what} is not a safetensors file (bad header: {exc})") from None
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{what}: header is not a JSON object")
    meta = doc.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ModelFormatError(f"{what}: header metadata must map strings to strings")
    entries: dict[str, _Entry] = {}
    start = 8 + n
    for name, e in doc.items():
        try:
            dtype, size = _DTYPES[e["dtype"]]
            if not isinstance(e["shape"], list) or len(e["shape"]) > MAX_DIMS:
                raise TypeError
            shape = tuple(e["shape"])
            begin, end = e["data_offsets"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_DIM
                       for v in shape) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_FILE_BYTES
                    for v in (begin, end)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{what}: tensor {name[:80]!r} is described wrongly") from None
        if end - begin != math.prod(shape) * size:
            raise ModelFormatError(f"{what}: tensor {name[:80]!r} has {end - begin} bytes for "
                                   f"shape {shape}")
        entries[name] = _Entry(dtype, shape, start + begin, start + end)
    at = start
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != at:
            raise ModelFormatError(f"{what}: tensor data overlaps or leaves gaps")
        at = e.end
    if at != len(data):
        raise ModelFormatError(f"{what}: {len(data) - at} bytes after the last tensor")
    return entries, meta


def _json_field(meta: dict[str, str], key: str, what: str) -> Any:
    if key not in meta:
        raise ModelFormatError(f"{what}: metadata field {key!r} is missing")
    return parse_json(meta[key], f"{what}: metadata field {key!r}", MAX_HEADER_BYTES,
                      ModelFormatError)


def _read(location: Location, what: str) -> bytes | None:
    fs, path = location.filesystem()
    try:
        size = fs.size(path)
    except FileNotFoundError:
        return None
    if size is not None and size > MAX_FILE_BYTES:
        raise ModelFormatError(f"{what} is {size:,} bytes, over the {MAX_FILE_BYTES:,} limit")
    # Read up to the size listed (a file that grew since is refused): a local read
    # reserves its whole limit up front, which need not be 4 GB for a 1 MB model.
    return location.read_bytes(limit=MAX_FILE_BYTES if size is None else size)


def _refuse_pickle(folder: Location, legacy: str, what: str) -> None:
    if folder.join(legacy).exists():
        raise ModelFormatError(
            f"{folder.join(legacy)} is a pickle, and loading a pickle can run any code: "
            f"refused. If you made it yourself, convert it once with `imambig "
            f"convert-model --model {folder}` ({what} is then read from "
            f"{folder.join(MODEL_FILE if legacy == LEGACY_MODEL_FILE else STATE_FILE).name})")


# ---------------------------------------------------------------------------
# Training state
# ---------------------------------------------------------------------------


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON tree of ``obj`` with its tensors moved to ``tensors`` (by path). Tuples
    become lists; dicts with other than string keys keep theirs as ``__items__``."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not {"__tensor__", "__items__"} & set(obj):
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, f"{path}/{i}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, list | tuple):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"training state at {path!r} holds a {type(obj).__name__}")


def _unflatten(tree: Any, tensors: dict[str, torch.Tensor], what: str) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            try:
                return tensors[tree["__tensor__"]]
            except (KeyError, TypeError):
                raise ModelFormatError(f"{what}: names a tensor it does not hold") from None
        if "__items__" in tree:
            try:
                return {k: _unflatten(v, tensors, what) for k, v in tree["__items__"]}
            except (TypeError, ValueError):
                raise ModelFormatError(f"{what}: malformed item list") from None
        return {k: _unflatten(v, tensors, what) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten(v, tensors, what) for v in tree]
    return tree


def save_state(folder: Location, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    meta = {"format": STATE_FORMAT, "tree": json.dumps(tree)}
    folder.join(STATE_FILE).write_bytes(safetensors.torch.save(tensors, metadata=meta))
    progress = {k: state[k] for k in ("epoch", "step_in_epoch", "global_step") if k in state}
    folder.join(PROGRESS_FILE).write_bytes(json.dumps(progress).encode())


def load_state(folder: Location) -> dict[str, Any] | None:
    what = str(folder.join(STATE_FILE))
    data = _read(folder.join(STATE_FILE), what)
    if data is None:
        _refuse_pickle(folder, LEGACY_STATE_FILE, "the training state")
        return None
    _, meta = _header(data, what)
    if meta.get("format") != STATE_FORMAT:
        raise ModelFormatError(f"{what} is not an imambig training state ({STATE_FORMAT})")
    tree = _json_field(meta, "tree", what)
    try:
        state = _unflatten(tree, safetensors.torch.load(data), what)
    except RecursionError:  # JSON that parsed, nested nearly to the interpreter's limit
        raise ModelFormatError(f"{what}: the state tree is nested too deeply") from None
    if not isinstance(state, dict):
        raise ModelFormatError(f"{what}: the state is not a mapping")
    return state


# ---------------------------------------------------------------------------
# The published model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    config: ModelConfig
    metadata: dict[str, Any]


def save_model(
    folder: Location,
    model: SparseAutoencoder,
    metadata: dict[str, Any],
    extras: dict[str, Any] | None = None,
) -> str:
    """Publish ``model.safetensors`` under ``folder``; returns the model id.

    ``metadata`` and ``extras`` (artefacts fitted on the model, e.g. the noise fit, so
    they travel with the weights) must be JSON; they do not change the model id.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    mid = model_id(model.config, state)
    meta = {
        "format": MODEL_FORMAT,
        "model_id": mid,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "metadata": json.dumps(metadata, sort_keys=True),
        "extras": json.dumps(extras or {}, sort_keys=True),
    }
    folder.join(MODEL_FILE).write_bytes(safetensors.torch.save(state, metadata=meta))
    return mid


def _model_file(location: Location) -> Location:
    return location if location.url.endswith(".safetensors") else location.join(MODEL_FILE)


def verify_model_bytes(data: bytes, what: str, expected_id: str | None = None
                       ) -> tuple[ModelConfig, dict[str, Any], str]:
    """(config, metadata, model id) of a model file's bytes, after checking that the
    weights hash to the id the file claims and, when given, to ``expected_id``; nothing
    but the JSON header is parsed before that."""
    entries, meta = _header(data, what)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFormatError(f"{what} is not an imambig model file ({MODEL_FORMAT})")
    try:
        config = ModelConfig.from_dict(_json_field(meta, "config", what))
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{what}: bad model config ({exc})") from None
    h = _config_digest(config)
    view = memoryview(data)
    for name in sorted(entries):
        e = entries[name]
        _hash_tensor(h, name, e.dtype, e.shape, view[e.begin : e.end])
    got = h.hexdigest()[:16]
    if got != meta.get("model_id"):
        raise TamperedError(f"{what}: weights do not match their model id (corrupted or "
                            "altered file)")
    if expected_id is not None and got != expected_id:
        raise TamperedError(f"{what} is model {got}, not the expected {expected_id}")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in SparseAutoencoder(config).state_dict().items()}
    if shapes != {k: e.shape for k, e in entries.items()}:
        raise ModelFormatError(f"{what}: tensors do not match the model config")
    fields = {key: _json_field(meta, key, what) for key in ("metadata", "extras")}
    if not all(isinstance(v, dict) for v in fields.values()):
        raise ModelFormatError(f"{what}: metadata and extras must be JSON objects")
    return config, fields, got


def load_model(
    location: Location, device: str | torch.device = "cpu", *, expected_id: str | None = None,
) -> tuple[SparseAutoencoder, ModelInfo, dict[str, Any]]:
    """Load ``model.safetensors`` from a model folder (or the file itself), verifying its
    content hash (and that it is ``expected_id``) before any tensor is built. Returns
    (model in eval mode, info, extras)."""
    model_file = _model_file(location)
    what = str(model_file)
    data = _read(model_file, what)
    if data is None:
        if not location.url.endswith(".safetensors"):
            _refuse_pickle(location, LEGACY_MODEL_FILE, "the model")
        raise FileNotFoundError(f"no model at {model_file} (train one with `imambig train`)")
    config, meta, mid = verify_model_bytes(data, what, expected_id)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in safetensors.torch.load(data).items()}
    model = SparseAutoencoder(config)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, ModelInfo(mid, config, meta["metadata"]), meta["extras"]


def _restricted_load(raw: bytes, what: str) -> Any:
    """torch's restricted unpickler, allowing only what earlier checkpoints held."""
    import io
    import pickle

    try:
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ModelFormatError(f"{what} holds more than tensors and plain values, or is "
                               f"damaged; not converted ({str(exc).splitlines()[0][:200]})"
                               ) from None


def convert_legacy(folder: Location) -> list[str]:
    """Rewrite one's own pickled ``model.pt`` / ``state.pt`` in ``folder`` as safetensors
    (same model id); returns the files written. Uses torch's restricted unpickler
    (``weights_only=True``), yet only run it on files you made yourself."""
    written = []
    raw = folder.join(LEGACY_MODEL_FILE).read_bytes()
    if raw is not None:
        payload = _restricted_load(raw, str(folder.join(LEGACY_MODEL_FILE)))
        config = ModelConfig.from_dict(payload["config"])
        if model_id(config, payload["state_dict"]) != payload["model_id"]:
            raise TamperedError(f"{folder.join(LEGACY_MODEL_FILE)}: weights do not match "
                                "their model id")
        model = SparseAutoencoder(config)
        model.load_state_dict(payload["state_dict"])
        save_model(folder, model, payload.get("metadata", {}), payload.get("extras"))
        written.append(MODEL_FILE)
    raw = folder.join(LEGACY_STATE_FILE).read_bytes()
    if raw is not None:
        save_state(folder, _restricted_load(raw, str(folder.join(LEGACY_STATE_FILE))))
        written.append(STATE_FILE)
    for name, new in ((LEGACY_MODEL_FILE, MODEL_FILE), (LEGACY_STATE_FILE, STATE_FILE)):
        if new in written:
            folder.join(name).delete()
    return written
