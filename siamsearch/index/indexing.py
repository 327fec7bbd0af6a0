"""Folder → diff file stamps → embed new and changed files → store, incremental.

Files are matched to rows by relative path, size and mtime_ns; with verify, also by the SHA-256 of their
content, which every row records with the file's frame count (both read by the decode worker that reads the
file for its vector). Rows of vanished and changed files go first; then the new and changed files are embedded
in one stream (one DataLoader, one worker pool) and committed to the store in chunks as the stream fills them,
so an interrupted run keeps its work and the next run carries on. Unchanged
files keep their ids; unreadable files are reported, and tried again next time.

Byte-identical files are embedded once: a file to embed whose size another file shares is hashed first, and
one with the content of an indexed file takes that file's stored vector, one with the content of another
new file waits for that file's. Each still gets its own row (dedup reports them "identical").

Files that seem gone may only be out of sight (an unmounted disk leaves an empty folder): a run refuses
to drop rows when the root holds no images, when a folder or link under it could not be read, or when
more than MAX_PRUNE_SHARE of the rows would go, unless told prune=True.

Commit cost: each commit rewrites the whole index.faiss, so a chunk is commit_every files or a tenth
of the vectors already stored, whichever is more. A first load of N files then writes about 11·N
vectors in O(log N) commits instead of N²/(2·commit_every), and a killed run loses at most the chunk
in flight: commit_every files or a tenth of what it had stored.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..core.checkpoint import load_encoder
from ..core.config import Runtime, to_dict
from ..core.device import precision, resolve_device
from ..core.decoding import FileFacts
from ..core.embed import EmbedResult, Progress, embed_batches, what_limits
from ..core.errors import NotAnIndexError, NotFoundError, PruneRefusedError, StoreError, StoreWriteError
from ..core.images import Failure, Scan, Selection, file_sha256, frame_count, identity_of, scan_images
from .folder import DECISIONS, INDEX, LOCK, MANIFEST, ROWS
from .rows import NewRow, Row
from .modelfile import index_amp, model_file
from .store import Store

COMMIT_GROWTH = 0.1  # a chunk is at least this fraction of the vectors stored: O(N) bytes written in all
INDEX_FILES = frozenset({MANIFEST, INDEX, ROWS, f"{ROWS}-wal", f"{ROWS}-shm", f"{ROWS}-journal", LOCK, DECISIONS,
                         f"{DECISIONS}-journal"})
MAX_PRUNE_SHARE = 0.5  # a run that would drop more of the rows than this refuses, unless told prune=True
EmbedStream = Callable[[Sequence[Path]], Iterable[EmbedResult]]  # files → their embedded batches, in order
Stamp = tuple[Path, int, int]  # (absolute path, size, mtime_ns)
# (relative path, vector, (w, h), failure, the hash and frames read with it: None where the commit reads them)
Embedded = tuple[str, np.ndarray | None, tuple[int, int], Failure | None, FileFacts | None]
Content = tuple[str, int]  # (hex SHA-256, size): files with the same are byte-identical


@dataclass
class SyncReport:
    """What a run did; updated files were re-embedded because their size, mtime or (verified) content changed.

    embedded counts the files the encoder saw: the other added and updated files are byte-identical copies
    that took the vector of a file with the same content.
    """

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary of a run: counts, seconds and the skipped files with their reasons."""
        return {"added": self.added, "updated": self.updated, "removed": self.removed, "unchanged": self.unchanged,
                "embedded": self.embedded, "seconds": round(self.seconds, 3),
                "failures": [f.to_dict() for f in self.failures]}


@dataclass
class Todo:
    """The files a run stores: their stamps, the paths that replace a row, the hashes known, who copies whom."""

    files: dict[str, Stamp]
    changed: set[str]
    hashes: dict[str, str | None]  # content hashes taken before embedding (of files whose size another shares)
    copies: dict[str, list[str]] = field(default_factory=dict)  # an embedded path → paths with its bytes


def index_folder(image_dir: Path | str, index_dir: Path | str, model_path: Path | str | None = None, *,
                 kind: str = "auto", rebuild: bool = False, prune: bool = False, verify: bool = False,
                 selection: Selection | None = None, runtime: Runtime = Runtime(), commit_every: int = 2048,
                 progress: Progress | None = None,
                 limited_by: Callable[[str], None] | None = None) -> tuple[Store, SyncReport]:
    """Create or update the index of a folder, embedding only new and changed files.

    A new index with no model_path is made with the built-in near-duplicate model (siamsearch.core.builtin).
    rebuild starts over, even from a broken index; prune drops the rows of missing files however many;
    verify re-embeds files whose content changed under an unchanged size and mtime. selection replaces
    the patterns the index records; None keeps them (a rebuilt readable index keeps them too).
    limited_by is told, after each embedded batch, what limits the run so far: "decode" or "encoder".

    Raises:
        CheckpointError: no usable model. ModelMismatchError: the index was built by another model.
        StoreError: the index directory is unusable, another process is writing to it, or files seem gone
        and prune is False (PruneRefusedError).
    """
    image_dir, index_dir = Path(image_dir).expanduser().resolve(), Path(index_dir).expanduser()
    if not image_dir.is_dir():
        raise NotFoundError(f"no such folder: {image_dir}")
    store = _existing(index_dir, rebuild)
    if store is None or rebuild:
        _check_folder(index_dir)
    if store is not None and not rebuild and store.root != image_dir:
        raise StoreError(f"{index_dir} indexes {store.root}, not {image_dir}; if the folder moved, run siamsearch "
                         f"relocate --index {index_dir} {image_dir}; else pass another --index or --rebuild")
    model_path = model_file(index_dir, store, model_path)
    model, ckpt = load_encoder(model_path)
    device = resolve_device(runtime.device)
    if selection is None:
        selection = store.selection if store is not None else Selection()
    if store is None or rebuild:
        if store is not None:
            store.close()
        store = Store.create(index_dir, dim=ckpt.encoder.embedding_dim, fingerprint=ckpt.fingerprint,
                             encoder=to_dict(ckpt.encoder), model_path=str(Path(model_path).resolve()),
                             root=image_dir, index_kind=kind, overwrite=rebuild,
                             precision=precision(device, runtime.amp), model_name=ckpt.name)
    store.check_model(ckpt.fingerprint)
    embed = partial(embed_batches, model, ckpt.preprocess, batch_size=runtime.batch_size, workers=runtime.workers,
                    device=device, amp=index_amp(store, device, runtime.amp), decode=runtime.decode,
                    compile=runtime.compile, facts=True)
    return store, sync(store, embed, rebuild=rebuild, prune=prune, verify=verify, selection=selection,
                       commit_every=commit_every, progress=progress, limited_by=limited_by)


def _existing(index_dir: Path, rebuild: bool) -> Store | None:
    """The index at index_dir, None for a new one; a broken one is None too when it is to be rebuilt."""
    if not (index_dir / MANIFEST).exists():
        return None
    try:
        return Store.open(index_dir)
    except StoreWriteError:  # a full disk: the index may be intact, and a rebuild could not write either
        raise
    except StoreError:
        if rebuild:  # _check_folder then checks that the folder holds only an index's files
            return None
        raise


def _check_folder(folder: Path) -> None:
    """Refuse to make an index in a file, or in a folder holding anything but an index's own files."""
    if folder.exists() and not folder.is_dir():
        raise NotAnIndexError(f"{folder} is a file, not an index folder; pass another --index")
    strangers = sorted(p.name for p in folder.iterdir() if not _index_file(p.name)) if folder.is_dir() else []
    if strangers:
        raise NotAnIndexError(f"{folder} is not a siamsearch index folder (it holds {strangers[0]!r}); "
                              "pass an empty or new folder as --index")


def _index_file(name: str) -> bool:
    """True for a file an index folder holds: its own, or a temporary one a killed write left behind."""
    temporary = name.startswith((f".{INDEX}.", f".{MANIFEST}.")) and name.endswith(".tmp")
    return name in INDEX_FILES or temporary


def sync(store: Store, embed: EmbedStream, *, rebuild: bool = False, prune: bool = False, verify: bool = False,
         selection: Selection | None = None, commit_every: int = 2048, progress: Progress | None = None,
         limited_by: Callable[[str], None] | None = None) -> SyncReport:
    """Make the index match the images under its root its selection keeps, embedding only new and changed files.

    embed is called once, with every file to embed; rebuild=True embeds every file again; prune=True drops
    the rows of missing files even when they may only be out of sight; verify=True also compares contents;
    selection, when given, chooses the files and is recorded in the manifest once the run may go on (files it
    leaves out lose their rows); a selection refused for pruning is not recorded. limited_by is told, after
    each batch, what limits the stream so far (embed.what_limits): "decode" or "encoder".

    Raises:
        NotFoundError: the root folder is gone. StoreLockedError: another process is writing to this index.
        ModelMismatchError: embed gives vectors of another size than the index holds.
        PruneRefusedError: rows would go while the root is empty or partly unreadable, or most rows would go.
    """
    start = time.perf_counter()
    if not store.root.is_dir():
        raise NotFoundError(f"no such folder: {store.root}")
    if commit_every < 1:
        raise ValueError("commit_every must be >= 1")
    with store.writing():
        report = _sync(store, embed, selection, rebuild, prune, verify, commit_every,
                       progress or (lambda done, total: None), limited_by or (lambda what: None))
    report.seconds = time.perf_counter() - start
    return report


def _sync(store: Store, embed: EmbedStream, selection: Selection | None, rebuild: bool, prune: bool, verify: bool,
          commit_every: int, progress: Progress, limited_by: Callable[[str], None]) -> SyncReport:
    """The body of sync, run under the store's write lock."""
    scan = scan_images(store.root, selection or store.selection)
    files, failures = _stamps(scan, store.root)
    known = {row.path: row for row in store.iter_rows()}
    keep = set() if rebuild else _unchanged(files, known, verify)
    todo = sorted(path for path in files if path not in keep)
    changed, kept = {path for path in todo if path in known}, [known[path] for path in keep]
    report = SyncReport(removed=len(known) - len(keep) - len(changed), unchanged=len(keep), failures=failures)
    if report.removed and not prune:
        _check_pruning(report.removed, len(known), scan, files, store.root)
    if selection is not None:  # only now: a mistyped pattern refused above must not stay for the next runs
        store.select(selection)
    store.remove([row.id for path, row in known.items() if path not in keep])
    work = Todo(files, changed, _hashes(todo, files, kept))
    pending, embed_now = _plan_copies(store, todo, work, kept)
    report.embedded, relative, done = len(embed_now), {files[path][0]: path for path in embed_now}, len(pending)
    progress(done, len(todo))
    waited = encoded = 0.0
    for batch in embed([files[path][0] for path in embed_now]) if embed_now else ():
        waited, encoded = waited + batch.waited, encoded + batch.encoded
        limited_by(what_limits(waited, encoded))
        entries = _per_file(batch, relative, work)
        pending.extend(entries)
        while len(pending) >= (size := max(commit_every, int(COMMIT_GROWTH * len(store)))):
            _commit(store, pending[:size], work, report)
            pending = pending[size:]
        done += len(entries)
        progress(done, len(todo))
    _commit(store, pending, work, report)
    return report


def _hashes(todo: list[str], files: dict[str, Stamp], kept: list[Row]) -> dict[str, str | None]:
    """Content hashes of the files to embed that may have a byte-identical twin: one that shares its size."""
    sizes = Counter(files[path][1] for path in todo) + Counter(row.size for row in kept)
    return {path: file_sha256(files[path][0]) for path in todo if sizes[files[path][1]] > 1}


def _plan_copies(store: Store, todo: list[str], work: Todo, kept: list[Row]) -> tuple[list[Embedded], list[str]]:
    """(entries of the copies of indexed files, with their stored vectors; the paths to embed) for todo.

    A path with the content of an indexed file takes its vector; one with the content of an earlier path
    waits for that path's (work.copies); the others are embedded.
    """
    indexed = {(row.sha256, row.size): row for row in kept if row.sha256 is not None}
    first: dict[Content, str] = {}
    reused: list[tuple[str, Row]] = []
    embed_now = []
    for path in todo:
        content = (work.hashes.get(path), work.files[path][1])
        if content[0] is None:
            embed_now.append(path)
        elif content in indexed:
            reused.append((path, indexed[content]))
        elif content in first:
            work.copies.setdefault(first[content], []).append(path)
        else:
            first[content] = path
            embed_now.append(path)
    vectors = store.vectors([row.id for _, row in reused])[1]
    return [(path, v, (row.width, row.height), None, FileFacts(row.sha256, row.frames))
            for (path, row), v in zip(reused, vectors)], embed_now


def _stamps(scan: Scan, root: Path) -> tuple[dict[str, Stamp], list[Failure]]:
    """Images by relative posix path with the stamp that detects changes, and the files that cannot be indexed.

    SQLite holds names as UTF-8: a name that is not (a surrogate-escaped byte) is a failure, not the end of a run.
    """
    found, failures = {}, list(scan.failures)
    for file in scan.images:
        path = file.relative_to(root).as_posix()
        if not _is_utf8(path):
            failures.append(Failure(file, "file name is not valid UTF-8; rename it"))
            continue
        try:
            st = file.stat()
        except OSError:  # vanished since it was listed
            continue
        found[path] = (file, st.st_size, st.st_mtime_ns)
    return found, failures


def _is_utf8(name: str) -> bool:
    """True when name can be stored as text: os gives undecodable bytes back as lone surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unchanged(files: dict[str, Stamp], known: dict[str, Row], verify: bool) -> set[str]:
    """Paths whose row still describes the file: same size and mtime and, with verify, a known, equal hash."""
    same = {path for path, row in known.items() if path in files and files[path][1:] == (row.size, row.mtime_ns)}
    if not verify:
        return same
    return {path for path in same if _same_content(files[path][0], known[path])}


def _same_content(file: Path, row: Row) -> bool:
    """True when the row's hash is known (an older index's is not) and the file's content still has it."""
    return row.sha256 is not None and row.sha256 == file_sha256(file)


def _check_pruning(gone: int, known: int, scan: Scan, files: dict[str, Stamp], root: Path) -> None:
    """Refuse to drop the rows of files that may only be out of sight (prune=True skips this)."""
    if not files:
        why = f"{root} holds no images (a disk that is not mounted?)"
    elif scan.unread:
        why = f"{scan.unread[0]} could not be read"
    elif gone > MAX_PRUNE_SHARE * known:
        why = f"more than {MAX_PRUNE_SHARE:.0%} of the indexed files are missing"
    else:
        return
    raise PruneRefusedError(f"not removing {gone} of {known} indexed files: {why}; "
                            "if they are really gone, run again with --prune")


def _per_file(batch: EmbedResult, relative: dict[Path, str], work: Todo) -> list[Embedded]:
    """A batch as one entry per file and per copy of it, sorted by relative path, so chunks cut anywhere.

    A file's hash and frames are those its decode worker read (none when the stream gives none); a copy's are
    read at its commit (its hash was taken before embedding)."""
    facts = batch.facts or [None] * len(batch.paths)
    good = [(path, v, wh, None, fact if path == relative[p] else None)
            for p, v, wh, fact in zip(batch.paths, batch.vectors, batch.sizes, facts, strict=True)
            for path in (relative[p], *work.copies.get(relative[p], ()))]
    bad = [(relative[f.path], None, (0, 0), f, None) for f in batch.failures]
    bad += [(path, None, (0, 0), Failure(work.files[path][0], f.reason), None) for f in batch.failures
            for path in work.copies.get(relative[f.path], ())]
    return sorted(good + bad, key=lambda entry: entry[0])


def _facts(path: str, known: FileFacts | None, work: Todo) -> FileFacts:
    """A row's hash and frames: as read with its vector; what is missing (a stream that gives none, a row of an
    old index) is read now, the hash taken before embedding (of a file that may have a twin) first."""
    file, known = work.files[path][0], known or FileFacts(None, None)
    sha256 = known.sha256 or (work.hashes[path] if path in work.hashes else file_sha256(file))
    return FileFacts(sha256, frame_count(file) if known.frames is None else known.frames)


def _commit(store: Store, chunk: list[Embedded], work: Todo, report: SyncReport) -> None:
    """Store one chunk: a row per readable file from its stamp, hash and frames; count it in the report."""
    good = [(path, vector, wh, facts) for path, vector, wh, failure, facts in chunk if failure is None]
    report.failures.extend(failure for *_, failure, _ in chunk if failure is not None)
    rows = [NewRow(path, identity_of(work.files[path][0], store.root), *work.files[path][1:], *wh,
                   *_facts(path, facts, work))
            for path, _, wh, facts in good]
    vectors = np.stack([vector for _, vector, *_ in good]) if good else np.zeros((0, store.dim), np.float32)
    for row, row_id in zip(rows, store.add(rows, vectors)):
        if row_id < 0:
            report.failures.append(Failure(work.files[row.path][0], "embedding is not finite"))
        elif row.path in work.changed:
            report.updated += 1
        else:
            report.added += 1
