"""The model file an index embeds with, and the precision it embeds in.

The one given; else the one that built the index: where its manifest says, else the file with its fingerprint
next to the index (an index that moved with its model), else, for the built-in model, its cache; a new index
with none given gets the built-in near-duplicate model. An index records the precision it was made in, and
every later embedding for it (updates, queries) uses that one, so a file's vector is the one stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core import builtin
from ..core.checkpoint import CheckpointError, model_with
from ..core.device import amp_for, precision
from ..core.errors import ModelMismatchError, StoreError
from .folder import read_manifest
from .store import Store


def model_of(store: Store, model_path: Path | str | None) -> Path:
    """The model to use with an index: the one given, else the one that built it (found_model).

    Raises:
        CheckpointError: none given, and none found.
    """
    return _given_or_recorded(store.path, store.info(), model_path)


def _given_or_recorded(folder: Path, manifest: dict[str, Any], model_path: Path | str | None) -> Path:
    """model_path, else the model the manifest of the index at folder names (recorded_model).

    Raises:
        CheckpointError: none given, and none found.
    """
    found = Path(model_path) if model_path is not None else recorded_model(folder, manifest)
    if found is None:
        raise CheckpointError(f"the model that built {folder} is neither where its manifest says nor next to "
                              "the index; pass --model")
    return found


def found_model(store: Store) -> Path | None:
    """The model that built an index (recorded_model)."""
    return recorded_model(store.path, store.info())


def recorded_model(folder: Path, manifest: dict[str, Any]) -> Path | None:
    """The model that built the index at folder: where its manifest says, else the file with its fingerprint next
    to the index folder or one level up (an index that moved with its model); None when neither has it. An index
    of the built-in model finds it in the cache, assembled again if need be. The manifest alone tells, so a broken
    index's model is found too."""
    recorded, fingerprint = manifest.get("model"), manifest["fingerprint"]
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if manifest.get("model_name") == builtin.label() and fingerprint == builtin.fingerprint():
        return builtin.builtin_model()  # its cache was cleared: assembled again, the same weights
    near = folder.resolve().parent
    return model_with(fingerprint, [near, near.parent], [Path(recorded).name] if recorded else [])


def model_file(index_dir: Path, store: Store | None, model_path: Path | str | None) -> Path:
    """The model index_folder embeds with: the one given; else the index's own, which even a broken index's
    manifest names (a rebuild keeps its model); else, for a new index, the built-in near-duplicate model."""
    if store is not None:
        return model_of(store, model_path)
    try:
        return _given_or_recorded(index_dir, read_manifest(index_dir), model_path)
    except StoreError:  # a new index, or one whose manifest is too damaged to name its model
        return Path(model_path) if model_path is not None else builtin.builtin_model()


def index_amp(store: Store, device: torch.device, amp: bool | None) -> bool | None:
    """The amp that embeds in the precision the index records (its own when amp is None), so that a vector
    of a file searched for is the one stored: distance 0 to itself, wherever the index was made.

    Raises:
        ModelMismatchError: amp asks for another precision than the index's (or this device cannot give it).
    """
    if store.precision is None:  # an index from before precisions were kept
        return amp
    wanted = amp_for(store.precision) if amp is None else amp
    if precision(device, wanted) != store.precision:
        raise ModelMismatchError(f"{store.path} holds {store.precision} vectors; on {device.type} with "
                                 f"{'--amp' if wanted else '--no-amp'} they would be {precision(device, wanted)}: "
                                 f"leave --amp/--no-amp out, or rebuild the index with --rebuild")
    return wanted
