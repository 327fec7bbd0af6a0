"""Folder → diff file stamps → embed new and changed files → store, incremental.

Files are matched to rows by relative path, size and mtime_ns. Rows of vanished and changed files go
first; then the new and changed files are embedded in one stream (one DataLoader, one worker pool) and
committed to the store in chunks as the stream fills them, so an interrupted run keeps its work and
the next run carries on. Unchanged files keep their ids; unreadable files are reported, and tried again
next time.

Commit cost: each commit rewrites the whole index.faiss, so a chunk is commit_every files or a tenth
of the vectors already stored, whichever is more. A first load of N files then writes about 11·N
vectors in O(log N) commits instead of N²/(2·commit_every), and a killed run loses at most the chunk
in flight: commit_every files or a tenth of what it had stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, load_encoder
from .config import Runtime, to_dict
from .device import resolve_device
from .embed import EmbedResult, Progress, embed_batches
from .errors import NotFoundError
from .images import Failure, find_images, identity_of
from .rows import NewRow
from .errors import StoreError
from .store import MANIFEST, Store

COMMIT_GROWTH = 0.1  # a chunk is at least this fraction of the vectors stored: O(N) bytes written in all
EmbedStream = Callable[[Sequence[Path]], Iterable[EmbedResult]]  # files → their embedded batches, in order
Stamp = tuple[Path, int, int]  # (absolute path, size, mtime_ns)
Embedded = tuple[str, np.ndarray | None, tuple[int, int], Failure | None]  # (relative path, vector, (w, h), failure)


@dataclass
class SyncReport:
    """What a run did; updated files were re-embedded because their size or mtime changed."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


def model_of(store: Store, model_path: Path | str | None) -> Path:
    """The model to use with an index: the one given, else the one recorded in its manifest."""
    if model_path is not None:
        return Path(model_path)
    recorded = store.info().get("model")
    if not recorded:
        raise CheckpointError(f"{store.path} records no model file; pass --model")
    return Path(recorded)


def index_folder(image_dir: Path | str, index_dir: Path | str, model_path: Path | str | None = None, *,
                 kind: str = "auto", rebuild: bool = False, runtime: Runtime = Runtime(),
                 commit_every: int = 2048, progress: Progress | None = None) -> tuple[Store, SyncReport]:
    """Create or update the index of a folder, embedding only new and changed files.

    Raises:
        CheckpointError: no usable model. ModelMismatchError: the index was built by another model.
        StoreError: the index directory is unusable or another process is writing to it.
    """
    image_dir, index_dir = Path(image_dir).expanduser().resolve(), Path(index_dir).expanduser()
    if not image_dir.is_dir():
        raise NotFoundError(f"no such folder: {image_dir}")
    exists = (index_dir / MANIFEST).exists()
    store = Store.open(index_dir) if exists else None
    if store is not None and not rebuild and store.root != image_dir:
        raise StoreError(f"{index_dir} indexes {store.root}, not {image_dir}; pass another --index or --rebuild")
    model_file = model_of(store, model_path) if store is not None else model_path
    if model_file is None:
        raise CheckpointError("a new index needs a model: pass --model MODEL.pt")
    model, ckpt = load_encoder(Path(model_file))
    if store is None or rebuild:
        if store is not None:
            store.close()
        store = Store.create(index_dir, dim=ckpt.encoder.dim, fingerprint=ckpt.fingerprint,
                             encoder=to_dict(ckpt.encoder), model_path=str(Path(model_file).resolve()),
                             root=image_dir, index_kind=kind, overwrite=exists)
    store.check_model(ckpt.fingerprint)
    embed = partial(embed_batches, model, ckpt.preprocess, batch_size=runtime.batch_size, workers=runtime.workers,
                    device=resolve_device(runtime.device), amp=runtime.amp)
    return store, sync(store, embed, rebuild=rebuild, commit_every=commit_every, progress=progress)


def sync(store: Store, embed: EmbedStream, *, rebuild: bool = False, commit_every: int = 2048,
         progress: Progress | None = None) -> SyncReport:
    """Make the index match the images under its root, embedding only new and changed files.

    embed is called once, with every file to embed; rebuild=True embeds every file again.

    Raises:
        NotFoundError: the root folder is gone. StoreLockedError: another process is writing to this index.
        ModelMismatchError: embed gives vectors of another size than the index holds.
    """
    start = time.perf_counter()
    if not store.root.is_dir():
        raise NotFoundError(f"no such folder: {store.root}")
    if commit_every < 1:
        raise ValueError("commit_every must be >= 1")
    with store.writing():
        report = _sync(store, embed, rebuild, commit_every, progress or (lambda done, total: None))
    report.seconds = time.perf_counter() - start
    return report


def _sync(store: Store, embed: EmbedStream, rebuild: bool, commit_every: int, progress: Progress) -> SyncReport:
    """The body of sync, run under the store's write lock."""
    files = _scan(store.root)
    known = {row.path: (row.id, (row.size, row.mtime_ns)) for row in store.iter_rows()}
    keep = {path for path, (_, stamp) in known.items()
            if not rebuild and path in files and files[path][1:] == stamp}
    todo = sorted(path for path in files if path not in keep)
    changed = {path for path in todo if path in known}
    report = SyncReport(removed=len(known) - len(keep) - len(changed), unchanged=len(keep))
    store.remove([row_id for path, (row_id, _) in known.items() if path not in keep])
    progress(0, len(todo))
    relative, pending, done = {files[path][0]: path for path in todo}, [], 0
    for batch in embed([files[path][0] for path in todo]) if todo else ():
        pending.extend(_per_file(batch, relative))
        while len(pending) >= (size := max(commit_every, int(COMMIT_GROWTH * len(store)))):
            _commit(store, pending[:size], files, changed, report)
            pending = pending[size:]
        done += len(batch.paths) + len(batch.failures)
        progress(done, len(todo))
    _commit(store, pending, files, changed, report)
    return report


def _scan(root: Path) -> dict[str, Stamp]:
    """Images under root by relative posix path, with the file stamp that detects changes."""
    found = {}
    for file in find_images(root):
        try:
            st = file.stat()
        except OSError:  # vanished since it was listed
            continue
        found[file.relative_to(root).as_posix()] = (file, st.st_size, st.st_mtime_ns)
    return found


def _per_file(batch: EmbedResult, relative: dict[Path, str]) -> list[Embedded]:
    """A batch as one entry per file, in the order asked for (sorted by relative path), so chunks cut anywhere."""
    good = [(relative[p], v, wh, None) for p, v, wh in zip(batch.paths, batch.vectors, batch.sizes, strict=True)]
    bad = [(relative[f.path], None, (0, 0), f) for f in batch.failures]
    return sorted(good + bad, key=lambda entry: entry[0])


def _commit(store: Store, chunk: list[Embedded], files: dict[str, Stamp], changed: set[str],
            report: SyncReport) -> None:
    """Store one chunk: a row per readable file from its stamp; count it in the report."""
    good = [(path, vector, wh) for path, vector, wh, failure in chunk if failure is None]
    report.failures.extend(failure for *_, failure in chunk if failure is not None)
    rows = [NewRow(path, identity_of(files[path][0], store.root), *files[path][1:], *wh) for path, _, wh in good]
    vectors = np.stack([vector for _, vector, _ in good]) if good else np.zeros((0, store.dim), np.float32)
    for row, row_id in zip(rows, store.add(rows, vectors)):
        if row_id < 0:
            report.failures.append(Failure(files[row.path][0], "embedding is not finite"))
        elif row.path in changed:
            report.updated += 1
        else:
            report.added += 1
