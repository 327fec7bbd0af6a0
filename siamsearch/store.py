"""The persistent index: FAISS vectors + SQLite rows (id ↔ path, file stamp) + a JSON manifest.

An index directory holds:
    index.faiss    every vector under the id of its row (IndexIDMap2 for flat/hnsw, IVF's own ids)
    rows.sqlite    images(id, path relative to root, identity, size, mtime_ns, width, height)
    manifest.json  format version, root, encoder fingerprint, index kind, count
    .lock          flock-ed by the one process writing

Crash safety: SQLite is the commit record. Additions write index.faiss before committing their rows;
deletions commit first and write index.faiss after. So a crash can only leave vectors without rows,
which loading drops. Rows without a vector (e.g. an older index.faiss put back) are dropped too,
so the next sync embeds those files again. Both files are replaced atomically (temp file, fsync, rename).

Commit cost: each commit rewrites the whole index.faiss, so a sync commits chunks of commit_every files
or a tenth of the vectors already stored, whichever is more. A first load of N files then writes about
11·N vectors in O(log N) commits instead of N²/(2·commit_every), and a killed run loses at most the
chunk in flight: commit_every files or a tenth of what it had stored.

Kinds (siamsearch.ann): every index starts flat; at the end of a sync the kind the size calls for is
built, and an approximate one is rebuilt when the collection has doubled or halved since (HNSW also on
any deletion: it cannot remove).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from .ann import KINDS, build_index, index_ids, kind_of, new_index, plan_kind, reconstruct
from .atomic import LockedError, exclusive_lock, write_atomic, write_json
from .errors import NotFoundError, SiamsearchError, UsageError
from .images import Failure, find_images, identity_of

FORMAT_VERSION = 1
MANIFEST, INDEX, ROWS, LOCK = "manifest.json", "index.faiss", "rows.sqlite", ".lock"
COMMIT_GROWTH = 0.1  # a sync's chunk is at least this fraction of the vectors stored: O(N) bytes written
COLUMNS = "id, path, identity, size, mtime_ns, width, height"
SCHEMA = """
CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, identity TEXT,
                     size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, width INTEGER NOT NULL,
                     height INTEGER NOT NULL);
PRAGMA journal_mode = WAL;
"""


class StoreError(SiamsearchError):
    """An index directory that cannot be used; the message is one line saying what to do."""


class NotAnIndexError(StoreError):
    """The directory holds no siamsearch index."""


class IndexExistsError(StoreError):
    """create() on a directory that already holds an index."""


class UnsupportedFormatError(StoreError):
    """The index was written by a newer siamsearch."""


class CorruptIndexError(StoreError):
    """A file of the index is missing or unreadable."""


class ModelMismatchError(StoreError):
    """The index was built by another encoder."""


class StoreLockedError(StoreError):
    """Another process holds the write lock."""


class EmbedOutput(Protocol):
    """What an embedding function returns; siamsearch.embed.EmbedResult has this shape."""

    paths: list[Path]  # files embedded, same order as vectors
    vectors: np.ndarray  # (N, D) float32, rows L2-normalised
    sizes: list[tuple[int, int]]  # (width, height) of each original image
    failures: list[Failure]


EmbedFn = Callable[[Sequence[Path]], EmbedOutput]
Progress = Callable[[int, int], None]  # (files done, files to do)
Stamp = tuple[Path, int, int]  # (absolute path, size, mtime_ns)


@dataclass(frozen=True)
class Row:
    """One indexed image: its stable id, where it is, and the file stamp it was embedded from."""

    id: int
    path: str  # relative to the index root, posix
    abspath: Path
    identity: str | None
    size: int
    mtime_ns: int
    width: int
    height: int


@dataclass
class SyncReport:
    """What a sync did; updated files were re-embedded because their size or mtime changed."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


# ---- files -----------------------------------------------------------------------------------


def _write_index(folder: Path, index: faiss.Index) -> None:
    """Replace index.faiss atomically."""
    write_atomic(folder / INDEX, lambda tmp: faiss.write_index(index, tmp))


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the index's exclusive write lock, or fail at once if another process has it."""
    try:
        with exclusive_lock(folder / LOCK):
            yield
    except LockedError:
        raise StoreLockedError(f"{folder}: another siamsearch process is writing to this index") from None


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run FAISS with n OpenMP threads, restoring the previous count; no change when n is None."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _now() -> str:
    """UTC timestamp for the manifest."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, checked for presence and format version."""
    if not (folder / MANIFEST).is_file():
        raise NotAnIndexError(f"{folder} is not a siamsearch index (no {MANIFEST})")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        version = int(manifest["format_version"])
    except (ValueError, KeyError, TypeError, OSError):
        raise CorruptIndexError(f"{folder / MANIFEST} is unreadable; rebuild the index with --rebuild") from None
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(f"{folder} has index format {version}, this siamsearch reads up to "
                                     f"{FORMAT_VERSION}; upgrade siamsearch or rebuild the index")
    return manifest


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


# ---- the store ---------------------------------------------------------------------------------


class Store:
    """An index directory: search it, read its rows, keep it in sync with an image folder.

    Get one from Store.open or Store.create. Reading takes no lock; sync and create hold the write lock.
    """

    def __init__(self, path: Path | str) -> None:
        """Load an existing index; Store.open says what can go wrong."""
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._writing = False
        self._load()

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open an index directory for searching and syncing.

        Raises:
            NotAnIndexError, UnsupportedFormatError, CorruptIndexError (all StoreError).
        """
        return cls(path)

    @classmethod
    def create(cls, path: Path | str, *, dim: int, fingerprint: str, encoder: dict[str, Any],
               model_path: str | None, root: Path | str, index_kind: str = "auto",
               overwrite: bool = False) -> Store:
        """Make an empty index for dim-d vectors of one encoder; overwrite replaces an existing one.

        Raises:
            IndexExistsError: path already holds an index and overwrite is False.
            StoreLockedError: another process is writing to it.
        """
        if index_kind not in ("auto", *KINDS):
            raise UsageError(f"unknown index kind {index_kind!r}; choose one of auto, {', '.join(KINDS)}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            if (path / MANIFEST).exists() and not overwrite:
                raise IndexExistsError(f"{path} already holds an index; open it, or rebuild it with --rebuild")
            for name in (MANIFEST, INDEX, ROWS, f"{ROWS}-wal", f"{ROWS}-shm"):  # manifest first: then no index
                (path / name).unlink(missing_ok=True)
            db = sqlite3.connect(path / ROWS)
            db.executescript(SCHEMA)
            db.close()
            index = new_index("flat", dim)  # every index starts flat; a sync lays out the kind at its end
            _write_index(path, index)
            now = _now()
            manifest = {"format_version": FORMAT_VERSION, "root": str(Path(root).resolve()), "model": model_path,
                        "fingerprint": fingerprint, "encoder": encoder, "metric": "l2", "dim": dim,
                        "index_kind": kind_of(index), "requested_kind": index_kind, "search": {},
                        "count": 0, "created": now, "updated": now}
            write_json(path / MANIFEST, manifest)
        return cls(path)

    # -- loading and repair

    def _load(self) -> None:
        """Read the three files, then drop vectors without rows and rows without vectors."""
        manifest = _read_manifest(self.path)
        try:
            index = faiss.read_index(str(self.path / INDEX))
        except RuntimeError:
            raise CorruptIndexError(f"{self.path / INDEX} is missing or unreadable; "
                                    "rebuild the index with --rebuild") from None
        try:
            kind_of(index)
        except ValueError as exc:  # a foreign index type is corrupt
            raise CorruptIndexError(f"{self.path / INDEX}: {exc}; rebuild the index with --rebuild") from None
        if index.d != manifest.get("dim"):
            raise CorruptIndexError(f"{self.path / INDEX} holds {index.d}-d vectors, the manifest says "
                                    f"{manifest.get('dim')}; rebuild the index with --rebuild")
        if not (self.path / ROWS).is_file():
            raise CorruptIndexError(f"{self.path / ROWS} is missing; rebuild the index with --rebuild")
        db = sqlite3.connect(self.path / ROWS)
        try:
            row_ids = np.fromiter((r[0] for r in db.execute("SELECT id FROM images")), np.int64)
        except sqlite3.DatabaseError:
            db.close()
            raise CorruptIndexError(f"{self.path / ROWS} is unreadable; rebuild the index with --rebuild") from None
        self.close()
        self._manifest, self._index, self._db = manifest, index, db
        self._repair(row_ids)

    def _repair(self, row_ids: np.ndarray) -> None:
        """Make vectors and rows agree after a crash; saved only by the process holding the lock."""
        vector_ids = index_ids(self._index)
        orphans = np.setdiff1d(vector_ids, row_ids, assume_unique=True)
        unembedded = np.setdiff1d(row_ids, vector_ids, assume_unique=True)
        if orphans.size:
            self._drop_vectors(orphans)
        if not self._writing:
            return
        if unembedded.size:  # forget them: the next scan sees the files as new
            self._db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in unembedded])
            self._db.commit()
        if orphans.size:
            _write_index(self.path, self._index)

    # -- writing

    def check_model(self, fingerprint: str) -> None:
        """Refuse to mix encoders: vectors of two models are not comparable.

        Raises:
            ModelMismatchError: the index was built by a model with another fingerprint.
        """
        mine = self._manifest["fingerprint"]
        if fingerprint != mine:
            raise ModelMismatchError(f"this index was built by another model (index {mine[:12]}, model "
                                     f"{fingerprint[:12]}); use the original model or --rebuild")

    def sync(self, root: Path | str, embed_fn: EmbedFn, *, rebuild: bool = False, commit_every: int = 2048,
             progress: Progress | None = None) -> SyncReport:
        """Make the index match the images under root, embedding only new and changed files.

        Files are matched to rows by relative path, size and mtime_ns. Rows of vanished and changed
        files go first; then new and changed files are embedded in chunks and each chunk is committed,
        so an interrupted run keeps its work and the next run carries on. A chunk is commit_every files,
        or COMMIT_GROWTH of the vectors already stored if that is more, so that rewriting index.faiss
        at each commit costs O(N) in all. Unchanged files keep their ids; new rows get fresh ones.
        Unreadable files are reported, and tried again next time. rebuild=True embeds every file again.

        Raises:
            StoreLockedError: another process is writing to this index.
            ModelMismatchError: embed_fn gives vectors of another size than the index holds.
        """
        start = time.perf_counter()
        root = Path(root).resolve()
        if not root.is_dir():
            raise NotFoundError(f"no such folder: {root}")
        if commit_every < 1:
            raise ValueError("commit_every must be >= 1")
        with _locked(self.path):
            self._writing = True
            try:
                report = self._sync(root, embed_fn, rebuild, commit_every, progress)
            finally:
                self._writing = False
        report.seconds = time.perf_counter() - start
        return report

    def _sync(self, root: Path, embed_fn: EmbedFn, rebuild: bool, commit_every: int,
              progress: Progress | None) -> SyncReport:
        """The body of sync, run under the write lock."""
        self._load()  # another process may have written since this one opened the index
        self._manifest["root"] = str(root)
        files = _scan(root)
        known = {path: (row_id, (size, mtime)) for row_id, path, size, mtime
                 in self._db.execute("SELECT id, path, size, mtime_ns FROM images")}
        keep = {path for path, (_, stamp) in known.items()
                if not rebuild and path in files and files[path][1:] == stamp}
        todo = sorted(path for path in files if path not in keep)
        changed = {path for path in todo if path in known}
        report = SyncReport(removed=len(known) - len(keep) - len(changed), unchanged=len(keep))
        self._delete(np.array([row_id for path, (row_id, _) in known.items() if path not in keep], np.int64))
        if progress:
            progress(0, len(todo))
        done = 0
        while done < len(todo):
            chunk = todo[done:done + max(commit_every, int(COMMIT_GROWTH * len(self)))]
            result = embed_fn([files[path][0] for path in chunk])
            added, bad = self._add(root, result, {files[path][0]: path for path in chunk}, files)
            report.updated += len(changed.intersection(added))
            report.added += len(added) - len(changed.intersection(added))
            report.failures.extend([*result.failures, *bad])
            done += len(chunk)
            if progress:
                progress(done, len(todo))
        self._finish()
        return report

    def _delete(self, ids: np.ndarray) -> None:
        """Drop rows, commit, then drop their vectors: a crash between leaves only vectors without rows."""
        if not ids.size:
            return
        self._db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in ids])
        self._db.commit()
        self._drop_vectors(ids)
        _write_index(self.path, self._index)
        self._write_manifest()

    def _add(self, root: Path, result: EmbedOutput, rel: dict[Path, str],
             files: dict[str, Stamp]) -> tuple[list[str], list[Failure]]:
        """Store one embedded chunk: index.faiss first, then the rows' commit, then the manifest.

        Returns:
            (relative paths added, files whose vectors were not finite).
        """
        if not result.paths:
            return [], []
        vectors = np.asarray(result.vectors, dtype=np.float32)
        if vectors.shape != (len(result.paths), self.dim):
            raise ModelMismatchError(f"the embedding function gave vectors of shape {vectors.shape}, "
                                     f"this index holds {self.dim}-d vectors")
        finite = np.isfinite(vectors).all(axis=1)
        bad = [Failure(Path(p), "embedding is not finite") for p, ok in zip(result.paths, finite) if not ok]
        kept = [(rel[Path(p)], Path(p), wh)
                for p, wh, ok in zip(result.paths, result.sizes, finite, strict=True) if ok]
        first = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sqlite_sequence WHERE name = 'images'")
        ids = np.arange(len(kept), dtype=np.int64) + first.fetchone()[0]  # AUTOINCREMENT: never reused
        rows = [(int(i), path, identity_of(file, root), *files[path][1:], w, h)
                for i, (path, file, (w, h)) in zip(ids, kept)]
        try:
            self._db.executemany(f"INSERT INTO images ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._index.add_with_ids(np.ascontiguousarray(vectors[finite]), ids)
            _write_index(self.path, self._index)
            self._db.commit()
        except BaseException:
            self._db.rollback()
            self._load()  # back to what is on disk, minus the vectors of this chunk
            raise
        self._write_manifest()
        return [path for path, _, _ in kept], bad

    def _finish(self) -> None:
        """Lay out the kind the size calls for, rebuilt (new lists, fresh tuning) when n doubled or halved."""
        n, kind, built = len(self), self.kind, self._manifest["search"].get("n", 0)
        want = plan_kind(self._manifest["requested_kind"], n)
        if want != kind or (want != "flat" and not built / 2 < n < 2 * built):
            self._rebuild(want)
            _write_index(self.path, self._index)
        self._write_manifest()

    def _rebuild(self, kind: str, ids: np.ndarray | None = None) -> None:
        """Build the index anew as kind from its own vectors (all, or those ids) and record the tuning."""
        ids, vectors = self.vectors(ids)
        self._index, self._manifest["search"] = build_index(kind, ids, vectors)

    def _drop_vectors(self, ids: np.ndarray) -> None:
        """Remove vectors by id: remove_ids where FAISS can, a rebuild without them for HNSW."""
        if self.kind == "hnsw":
            self._rebuild("hnsw", np.setdiff1d(index_ids(self._index), ids))
        else:
            self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def _write_manifest(self) -> None:
        """Replace manifest.json atomically with the current kind and count."""
        self._manifest.update(index_kind=self.kind, count=len(self), updated=_now())
        write_json(self.path / MANIFEST, self._manifest)

    # -- reading

    @property
    def dim(self) -> int:
        """Vector size."""
        return self._index.d

    @property
    def kind(self) -> str:
        """flat, hnsw, ivf or ivfpq: what the index is now (every index starts flat)."""
        return kind_of(self._index)

    @property
    def approximate(self) -> bool:
        """True when search may miss true neighbours (hnsw, ivf, ivfpq); flat is exact."""
        return self.kind != "flat"

    @property
    def root(self) -> Path:
        """The indexed folder; row paths are relative to it."""
        return Path(self._manifest["root"])

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the encoder that made the vectors."""
        return self._manifest["fingerprint"]

    def __len__(self) -> int:
        return self._index.ntotal

    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        """Queries as a C-contiguous (Q, D) float32 array, or a clear error."""
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (Q, {self.dim}), got {np.shape(vectors)}")
        return q

    def search(self, vectors: np.ndarray, k: int, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored vectors of each query.

        Args:
            vectors: (Q, D) float32 queries, L2-normalised like the stored vectors.
            threads: FAISS threads for this call (the process-wide default when None).

        Returns:
            (distances (Q, k) float32 Euclidean, ascending; ids (Q, k) int64), padded with inf and -1
            when fewer than k vectors are found.
        """
        if k < 1:
            raise UsageError("k must be >= 1")
        with _threads(threads):
            squared, ids = self._index.search(self._queries(vectors), k)
        distances = np.sqrt(np.maximum(squared, 0))
        distances[ids < 0] = np.inf
        return distances, ids

    def range_search(self, vectors: np.ndarray, radius: float, *,
                     threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored vector closer than radius (Euclidean) to each query, nearest first.

        Approximate kinds may miss some (HNSW looks only among efSearch candidates).

        Returns:
            (lims (Q+1,) int64, distances (R,) float32, ids (R,) int64): the hits of query i are
            distances[lims[i]:lims[i+1]], as in faiss.
        """
        with _threads(threads):
            lims, squared, ids = self._index.range_search(self._queries(vectors), float(radius) ** 2)
        lims = lims.astype(np.int64)
        order = np.lexsort((squared, np.repeat(np.arange(len(lims) - 1), np.diff(lims))))
        return lims, np.sqrt(np.maximum(squared[order], 0)), ids[order].astype(np.int64)

    def _row(self, r: tuple) -> Row:
        """A Row from a SELECT of COLUMNS."""
        return Row(r[0], r[1], self.root / r[1], *r[2:])

    def rows(self, ids: Sequence[int] | np.ndarray) -> list[Row]:
        """The rows of those ids, in the same order.

        Raises:
            KeyError: an id (e.g. -1 padding) has no row.
        """
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        found: dict[int, Row] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            sql = f"SELECT {COLUMNS} FROM images WHERE id IN ({', '.join('?' * len(part))})"
            found.update((r[0], self._row(r)) for r in self._db.execute(sql, part))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"no rows with ids {missing[:5]}")
        return [found[i] for i in wanted]

    def iter_rows(self) -> Iterator[Row]:
        """Every row, by id."""
        for r in self._db.execute(f"SELECT {COLUMNS} FROM images ORDER BY id"):
            yield self._row(r)

    def vectors(self, ids: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors, read back from the index (PQ approximations for ivfpq).

        Returns:
            (ids (N,) int64, all of them sorted when ids is None; vectors (N, D) float32).
        """
        ids = index_ids(self._index) if ids is None else np.asarray(ids, dtype=np.int64).ravel()
        return ids, reconstruct(self._index, ids)

    def info(self) -> dict[str, Any]:
        """The manifest plus what is true now: count, kind, exactness and size on disk."""
        files = [self.path / name for name in (MANIFEST, INDEX, ROWS)]
        return {**self._manifest, "path": str(self.path), "count": len(self), "index_kind": self.kind,
                "approximate": self.approximate, "bytes": sum(f.stat().st_size for f in files if f.exists())}

    def close(self) -> None:
        """Close the SQLite connection."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
