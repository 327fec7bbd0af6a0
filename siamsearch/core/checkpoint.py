"""Self-describing checkpoints: weights + encoder config + eval preprocessing + calibration.

Saved atomically, loaded with `weights_only=True`, versioned, and fingerprinted by a hash of the
weights so an index can refuse vectors from a different model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from .atomic import write_atomic
from .calibration import purpose_of
from .config import EncoderConfig, Preprocess, TrainConfig, from_dict, to_dict
from .errors import SiamsearchError, UsageError
from .model import Encoder

T = TypeVar("T")

FORMAT_VERSION = 1
KIND_MODEL = "siamsearch.encoder"
KIND_RESUME = "siamsearch.resume"
_PREFIXES = ("module.", "_orig_mod.")
NONE = type(None)
# What each file kind must hold, and of which types; older model files may lack train, history, calibration.
MODEL_ENTRIES: dict[str, tuple[type, ...]] = {
    "fingerprint": (str,), "encoder": (dict,), "preprocess": (dict,), "state_dict": (dict,),
    "train": (dict, NONE), "history": (list,), "calibration": (dict,), "name": (str, NONE)}
RESUME_ENTRIES: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "encoder": (dict,), "train": (dict,), "epoch": (int,),
    "history": (list,), "elapsed": (int, float), "fingerprint": (str, NONE)}


class CheckpointError(SiamsearchError):
    """A checkpoint that cannot be used; the message says what to do."""


@dataclass
class Checkpoint:
    """Everything a model file holds besides the network object itself."""

    encoder: EncoderConfig
    preprocess: Preprocess
    state_dict: dict[str, torch.Tensor]
    fingerprint: str
    train: TrainConfig | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # a shipped model's name and version (siamsearch.core.builtin); None for a trained one


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """Short SHA-256 of the weights (names, shapes, bytes): the identity of a trained encoder."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _clean_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DataParallel / torch.compile prefixes so any wrapped model loads."""
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save that never leaves a half-written file (see siamsearch.core.atomic)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_model(path: Path, model: Encoder, train: TrainConfig | None = None,
               history: list[dict[str, Any]] | None = None, calibration: dict[str, Any] | None = None,
               name: str | None = None) -> str:
    """Write a model file; returns its fingerprint. name: a shipped model's name and version."""
    state = {k: v.detach().cpu() for k, v in _clean_state(model.state_dict()).items()}
    fp = fingerprint(state)
    atomic_save({
        "kind": KIND_MODEL, "format_version": FORMAT_VERSION, "fingerprint": fp,
        "encoder": to_dict(model.cfg), "preprocess": to_dict(model.cfg.preprocess()),
        "train": to_dict(train) if train else None, "history": history or [],
        "calibration": calibration or {}, "name": name, "state_dict": state,
    }, path)
    return fp


def _read(path: Path, kind: str, mmap: bool = False) -> dict[str, Any]:
    """torch.load with weights_only=True and one-line errors for every way a file can be wrong.

    mmap=True maps the tensors instead of reading them: for callers that want only the metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model file at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path} is not a readable siamsearch checkpoint ({type(exc).__name__}); "
                              "was it written completely?") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise CheckpointError(f"{path} is not a siamsearch {kind.split('.')[1]} file")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {data['format_version']}; this siamsearch reads up to "
                              f"{FORMAT_VERSION}: upgrade siamsearch")
    return data


def damaged(path: Path, what: str) -> CheckpointError:
    """The one error for a file with an entry missing, of the wrong type or not fitting the network."""
    return CheckpointError(f"{path} is damaged ({what}); train again or use another file")


def _checked(path: Path, data: dict[str, Any], entries: dict[str, tuple[type, ...]], weights: str) -> dict[str, Any]:
    """`data` when every entry the loaders read is there with its type; else one line naming the first that is not."""
    for key, types in entries.items():
        if not isinstance(data.get(key), types):
            names = " or ".join("None" if t is NONE else t.__name__ for t in types)
            raise damaged(path, f"{key!r} is missing or not a {names}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data[weights].items()):
        raise damaged(path, "its weights are not a dict of named tensors")
    return data


def _read_model(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A model file's entries, checked; the ones older files lack are filled in.

    The fingerprint is computed again from the weights: a file found by lookup beside an index is trusted by
    it, so the one it declares must not be believed (an edited file could pose as the index's model).
    """
    data = {"train": None, "history": [], "calibration": {}, "name": None} | _read(path, KIND_MODEL, mmap)
    data = _checked(path, data, MODEL_ENTRIES, "state_dict")
    if fingerprint(_clean_state(data["state_dict"])) != data["fingerprint"]:
        raise damaged(path, "its weights do not give the fingerprint it declares")
    return data


def _config(cls: type[T], path: Path, data: dict[str, Any], key: str) -> T:
    """A config stored in a file; a value of the wrong type or out of range means the file is damaged."""
    try:
        return from_dict(cls, data[key])
    except UsageError as exc:
        raise damaged(path, f"{key}: {exc}") from None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a model file without building the network.

    Raises:
        CheckpointError: no file, not a model file, from a newer siamsearch, or damaged.
    """
    data = _read_model(path)
    return Checkpoint(
        encoder=_config(EncoderConfig, path, data, "encoder"),
        preprocess=_config(Preprocess, path, data, "preprocess"),
        state_dict=_clean_state(data["state_dict"]),
        fingerprint=data["fingerprint"],
        train=_config(TrainConfig, path, data, "train") if data["train"] else None,
        history=data["history"],
        calibration=data["calibration"],
        name=data["name"],
    )


def read_calibration(path: Path) -> tuple[str, dict[str, Any]]:
    """(fingerprint, calibration with its "purpose") of a model file, its weights left on disk: dedup's needs."""
    data = _read_model(path, mmap=True)
    self_supervised = (data.get("train") or {}).get("self_supervised")
    return data["fingerprint"], data["calibration"] | {"purpose": purpose_of(data["calibration"], self_supervised)}


def read_fingerprint(path: Path) -> str:
    """The fingerprint of a model file, its weights left on disk."""
    return _read_model(path, mmap=True)["fingerprint"]


def model_with(fingerprint: str, folders: Sequence[Path], names: Sequence[str] = ()) -> Path | None:
    """The first model file with this fingerprint in these folders (those names first, then every *.pt), or None.

    How a moved index finds the model that built it: the fingerprint, not the name, says it is the one.
    """
    for folder in folders:
        for path in dict.fromkeys([*(folder / name for name in names), *sorted(folder.glob("*.pt"))]):
            try:
                if path.is_file() and read_fingerprint(path) == fingerprint:
                    return path
            except CheckpointError:  # another kind of file, or damaged: not the one
                continue
    return None


def load_encoder(path: Path, device: str | torch.device = "cpu") -> tuple[Encoder, Checkpoint]:
    """Build the encoder a model file describes, load its weights, eval mode, on `device`."""
    ckpt = load_checkpoint(path)
    model = Encoder(ckpt.encoder, download=False)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise damaged(path, f"weights do not match the stored encoder config: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), ckpt


def update_model_file(path: Path, **fields: Any) -> None:
    """Replace metadata (calibration, history) in a model file; weights and fingerprint stay the same."""
    data = _read(path, KIND_MODEL)
    unknown = set(fields) - {"calibration", "history"}
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))} in a model file")
    data.update(fields)
    atomic_save(data, path)


def save_resume(path: Path, state: dict[str, Any]) -> None:
    """Write the full training state (model, optimizer, epoch, history) for --resume."""
    atomic_save({"kind": KIND_RESUME, "format_version": FORMAT_VERSION, **state}, path)


def load_resume(path: Path) -> dict[str, Any]:
    """Read a training state written by save_resume, checked like a model file."""
    return _checked(path, {"fingerprint": None} | _read(path, KIND_RESUME), RESUME_ENTRIES, "model")
