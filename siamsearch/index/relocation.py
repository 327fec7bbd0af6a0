"""An index whose folder moved: point it at the new place after checking a sample of files; embed nothing.

Rows hold paths relative to the root, so only the manifest's absolute root and model path tie an index to
one place. relocate checks that the new root holds the indexed files: a sample of rows spread over the ids,
each file with the size and mtime_ns of its row, and the smaller ones (up to HASH_BYTES in all) with its
content hash. Files changed since the last run may miss, so MATCH_SHARE of the sample must match; a folder
that is not the one indexed matches almost none. The model is found where the manifest says, else by
fingerprint next to the index (siamsearch.index.modelfile.found_model), and recorded with the root.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np

from ..core.checkpoint import read_fingerprint
from ..core.errors import ModelMismatchError, NotFoundError, RelocateRefusedError
from ..core.images import file_sha256
from .modelfile import found_model
from .rows import Row
from .store import Store

SAMPLE = 64  # rows whose files are checked under the new root
MATCH_SHARE = 0.9  # of the sample that must match: an index a few edits behind its folder still moves
HASH_BYTES = 64 * 2**20  # sampled files hashed, smallest first, up to this many bytes in all


@dataclass(frozen=True)
class Relocation:
    """Where an index now points, where it pointed, how the sample went, and the model found (None: not found)."""

    root: Path
    old_root: Path
    sampled: int
    matched: int
    hashed: int
    model: Path | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary of a relocation."""
        return {"root": str(self.root), "old_root": str(self.old_root), "sampled": self.sampled,
                "matched": self.matched, "hashed": self.hashed, "model": str(self.model) if self.model else None}


def relocate(index_dir: Path | str, new_root: Path | str, model_path: Path | str | None = None, *,
             sample: int = SAMPLE) -> Relocation:
    """Point an index at the folder its files moved to (and at its model), after checking a sample of them.

    model_path: the model, when it is neither where the manifest says nor next to the index.

    Raises:
        NotFoundError: no such folder. RelocateRefusedError: the sample does not match, or the old folder
        still holds the files (the new one is a copy).
        ModelMismatchError: model_path is not the model that built the index. StoreLockedError.
    """
    root = Path(new_root).expanduser().resolve()
    if not root.is_dir():
        raise NotFoundError(f"no such folder: {root}")
    with Store.open(Path(index_dir).expanduser()) as store, store.writing():
        old_root, rows = store.root, _sample(store, sample)
        by_content = _compared_by_content(rows)
        misses = [(row.path, why) for row, why in zip(rows, _check(root, rows, by_content)) if why]
        if not _holds(root, rows, by_content):
            raise RelocateRefusedError(
                f"{root} does not hold the files {store.path} indexed: {len(rows) - len(misses)} of {len(rows)} "
                f"sampled files match ({misses[0][0]}: {misses[0][1]}); pass the folder they moved to")
        if root != old_root and old_root.is_dir() and _holds(old_root, rows, by_content):
            raise RelocateRefusedError(
                f"{old_root} still holds the files {store.path} indexed, so {root} is a copy, not where they moved; "
                f"index the copy with its own --index, or relocate once the old folder is gone")
        model = _model(store, model_path)
        store.repoint(root, str(model.resolve()) if model else store.info().get("model"))
    return Relocation(root, old_root, len(rows), len(rows) - len(misses), len(by_content), model)


def _holds(root: Path, rows: list[Row], by_content: set[str]) -> bool:
    """True when at least MATCH_SHARE of the sampled rows' files under root are the ones indexed."""
    return sum(not why for why in _check(root, rows, by_content)) >= MATCH_SHARE * len(rows)


def _sample(store: Store, size: int) -> list[Row]:
    """Up to size rows spread evenly over the ids (old and new files alike), in id order."""
    ids = store.ids()
    return store.rows(np.unique(ids[np.linspace(0, len(ids) - 1, min(size, len(ids))).astype(np.int64)]))


def _compared_by_content(rows: list[Row]) -> set[str]:
    """The sampled paths whose content is hashed too: rows with a hash, smallest first, up to HASH_BYTES in all."""
    with_hash = sorted((row for row in rows if row.sha256 is not None), key=lambda row: row.size)
    return {row.path for row, total in zip(with_hash, accumulate(row.size for row in with_hash)) if total <= HASH_BYTES}


def _check(root: Path, rows: list[Row], by_content: set[str]) -> list[str]:
    """Why each row's file under root is not the one indexed ("" when it is): missing, size, mtime or content."""
    return [_mismatch(root / row.path, row, row.path in by_content) for row in rows]


def _mismatch(file: Path, row: Row, compare_content: bool) -> str:
    """Why file is not the one row describes, or "" when it is."""
    try:
        st = file.stat()
    except OSError:
        return "missing"
    if st.st_size != row.size:
        return "another size"
    if st.st_mtime_ns != row.mtime_ns:
        return "another modification time"
    if compare_content and file_sha256(file) != row.sha256:
        return "another content"
    return ""


def _model(store: Store, model_path: Path | str | None) -> Path | None:
    """The model given (checked to be the index's) or found; None when neither."""
    if model_path is None:
        return found_model(store)
    if read_fingerprint(Path(model_path)) != store.fingerprint:
        raise ModelMismatchError(f"{model_path} is not the model that built {store.path}; pass that one")
    return Path(model_path)
