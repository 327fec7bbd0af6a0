"""The persistent index: FAISS vectors + SQLite rows (id ↔ path, file stamp) + a JSON manifest.

An index directory holds:
    index.faiss    every vector under the id of its row (IndexIDMap2 for flat/hnsw, IVF's own ids)
    rows.sqlite    images(id, path relative to root, identity, size, mtime_ns, width, height, sha256)
    manifest.json  format version, root, encoder fingerprint, index kind, count
    .lock          held (filelock) by the one process writing

Crash safety: SQLite is the commit record. Additions write index.faiss before committing their rows;
deletions commit first and write index.faiss after. So a crash can only leave vectors without rows,
which loading drops. Rows without a vector (e.g. an older index.faiss put back) are dropped too,
so the next indexing run embeds those files again. Both files are replaced atomically (temp file, fsync,
rename). Each add and remove is one such commit and rewrites the whole index.faiss, so callers add in
growing chunks (siamsearch.index.indexing says how).

Readers: loading reads index.faiss, then the rows inside one SQLite read transaction that stays open
(siamsearch.index.rows), so every vector a reader holds keeps its row while a writer commits beside it.

Writing happens inside Store.writing(), which holds the lock. Kinds (siamsearch.index.ann): every index starts
flat; when a writing run ends, the kind the size calls for is built, and an approximate one is rebuilt
when the collection has doubled or halved since (HNSW also on any deletion: it cannot remove).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .ann import KINDS, build_index, index_ids, kind_of, new_index, plan_kind, reconstruct
from ..core.atomic import write_json
from ..core.errors import CorruptIndexError, IndexExistsError, ModelMismatchError, UsageError
from ..core.images import Selection
from .folder import (
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    ROWS,
    disk_writes,
    locked,
    now,
    open_rows,
    read_manifest,
    write_index,
)
from .rows import NewRow, Row, RowTable

# ---- the store ---------------------------------------------------------------------------------


class Store:
    """An index directory: search it, read its rows, add and remove rows with their vectors.

    Get one from Store.open or Store.create. Reading takes no lock; create and writing() hold the write lock.
    """

    def __init__(self, path: Path | str) -> None:
        """Load an existing index; Store.open says what can go wrong."""
        self.path = Path(path)
        self._rows: RowTable | None = None
        self._writing = False
        self._load()

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open an index directory for searching and writing.

        Raises:
            NotAnIndexError, UnsupportedFormatError, CorruptIndexError (all StoreError).
        """
        return cls(path)

    @classmethod
    def create(cls, path: Path | str, *, dim: int, fingerprint: str, encoder: dict[str, Any],
               model_path: str | None, root: Path | str, index_kind: str = "auto", overwrite: bool = False,
               precision: str | None = None, model_name: str | None = None) -> Store:
        """Make an empty index for dim-d vectors of one encoder; overwrite replaces an existing one, even a broken one.

        precision: what the vectors are embedded in (siamsearch.core.device.precision), kept for queries and updates.

        Raises:
            IndexExistsError: path already holds an index and overwrite is False. StoreLockedError: another
            process is writing to it.
        """
        if index_kind not in ("auto", *KINDS):
            raise UsageError(f"unknown index kind {index_kind!r}; choose one of auto, {', '.join(KINDS)}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with locked(path):
            if (path / MANIFEST).exists() and not overwrite:
                raise IndexExistsError(f"{path} already holds an index; open it, or rebuild it with --rebuild")
            for name in (MANIFEST, INDEX, ROWS, f"{ROWS}-wal", f"{ROWS}-shm"):  # manifest first: then no index
                (path / name).unlink(missing_ok=True)
            RowTable.create(path / ROWS)
            index = new_index("flat", dim)  # every index starts flat; a writing run lays out the kind at its end
            write_index(path, index)
            stamp = now()
            manifest = {"format_version": FORMAT_VERSION, "root": str(Path(root).resolve()), "model": model_path,
                        "fingerprint": fingerprint, "encoder": encoder, "metric": "l2", "dim": dim,
                        "index_kind": kind_of(index), "requested_kind": index_kind, "search": {},
                        "count": 0, "created": stamp, "updated": stamp, "precision": precision,
                        "model_name": model_name}  # a shipped model's name and version (siamsearch.core.builtin)
            write_json(path / MANIFEST, manifest)
        return cls(path)

    # -- loading and repair

    def _load(self) -> None:
        """Read the three files, then drop vectors without rows and rows without vectors."""
        manifest = read_manifest(self.path)
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
        rows = open_rows(self.path, Path(manifest["root"]))
        self.close()
        self._manifest, self._index, self._rows = manifest, index, rows
        if self._writing:
            rows.upgrade()
        self._repair(rows.ids_at_open())

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
            self._rows.delete(unembedded)
            self._rows.commit()
        if orphans.size:
            write_index(self.path, self._index)

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

    @contextmanager
    def writing(self) -> Iterator[Store]:
        """Hold the write lock for a run of add and remove, starting from what is on disk now.

        A run that ends without an error lays out the kind the size calls for; one that fails keeps
        what it committed, and the next run carries on.

        Raises:
            StoreLockedError: another process is writing to this index.
        """
        self._check_not_ondisk("`siamsearch index` cannot add to it; build it again with `siamsearch cluster index`")
        with locked(self.path):
            self._writing = True
            try:
                self._load()  # another process may have written since this one opened the index
                yield self
                self._finish()
            finally:
                self._writing = False

    def _check_not_ondisk(self, consequence: str) -> None:
        """Refuse what an index merged on disk by `siamsearch cluster index` cannot do (no vectors to read back).

        Raises:
            UsageError: this index keeps its inverted lists on disk.
        """
        if self._manifest.get("ondisk"):
            raise UsageError(f"{self.path} was built by `siamsearch cluster index` (lists on disk, read-only); "
                             f"{consequence}")

    def _check_writing(self) -> None:
        """Refuse writes outside writing(): without the lock two processes could interleave commits."""
        if not self._writing:
            raise RuntimeError("write to a Store inside `with store.writing():`")

    def add(self, rows: Sequence[NewRow], vectors: np.ndarray) -> np.ndarray:
        """Store new rows with their vectors: index.faiss first, then the rows' commit, then the manifest.

        Args:
            rows: the new rows, paths not in the index yet.
            vectors: (N, D) float32, one per row, L2-normalised.

        Returns:
            (N,) int64 fresh ids (never reused), -1 for a row refused because its vector is not finite.

        Raises:
            ModelMismatchError: the vectors have another size than the index holds.
        """
        self._check_writing()
        ids = np.full(len(rows), -1, np.int64)
        if not rows:
            return ids
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dim):
            raise ModelMismatchError(f"got vectors of shape {vectors.shape} for {len(rows)} rows, "
                                     f"this index holds {self.dim}-d vectors")
        finite = np.isfinite(vectors).all(axis=1)
        ids[finite] = np.arange(finite.sum(), dtype=np.int64) + self._rows.next_id()
        with disk_writes(self.path):
            try:
                self._rows.insert(ids[finite], [row for row, ok in zip(rows, finite) if ok])
                self._index.add_with_ids(np.ascontiguousarray(vectors[finite]), ids[finite])
                write_index(self.path, self._index)
                self._rows.commit()
            except BaseException:
                self._rows.rollback()
                self._load()  # back to what is on disk, minus the vectors of this chunk
                raise
            self._write_manifest()
        return ids

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        """Drop rows, commit, then drop their vectors: a crash between leaves only vectors without rows."""
        self._check_writing()
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if not ids.size:
            return
        with disk_writes(self.path):
            self._rows.delete(ids)
            self._rows.commit()
            self._drop_vectors(ids)
            write_index(self.path, self._index)
            self._write_manifest()

    def select(self, selection: Selection) -> None:
        """Record the patterns that choose the root's files, so later runs without them keep the same files."""
        self._check_writing()
        self._manifest.update(include=list(selection.include), exclude=list(selection.exclude))
        with disk_writes(self.path):
            self._write_manifest()

    def repoint(self, root: Path, model_path: str | None) -> None:
        """Record where the indexed folder and the model are now (rows are relative to the root: nothing else moves)."""
        self._check_writing()
        self._manifest.update(root=str(root), model=model_path)
        self._rows.root = root
        with disk_writes(self.path):
            self._write_manifest()

    def _finish(self) -> None:
        """Lay out the kind the size calls for, rebuilt (new lists, fresh tuning) when n doubled or halved."""
        n, kind, built = len(self), self.kind, self._manifest["search"].get("n", 0)
        want = plan_kind(self._manifest["requested_kind"], n)
        if want != kind or (want != "flat" and not built / 2 < n < 2 * built):
            self._rebuild(want)
            write_index(self.path, self._index)
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
        self._manifest.update(index_kind=self.kind, count=len(self), updated=now())
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
    def precision(self) -> str | None:
        """The precision the vectors were embedded in ("fp32", "bf16", "fp16"); None for an index made before it was kept."""
        return self._manifest.get("precision")

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the encoder that made the vectors."""
        return self._manifest["fingerprint"]

    @property
    def selection(self) -> Selection:
        """The include and exclude patterns recorded for the root (an index made before them has none)."""
        return Selection(tuple(self._manifest.get("include", ())), tuple(self._manifest.get("exclude", ())))

    def __len__(self) -> int:
        return self._index.ntotal

    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        """Queries as a C-contiguous (Q, D) float32 array, or a clear error."""
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (Q, {self.dim}), got {np.shape(vectors)}")
        return q

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored vectors of each query.

        Args:
            vectors: (Q, D) float32 queries, L2-normalised like the stored vectors.

        Returns:
            (distances (Q, k) float32 Euclidean, ascending; ids (Q, k) int64), padded with inf and -1
            when fewer than k vectors are found.
        """
        if k < 1:
            raise UsageError("k must be >= 1")
        squared, ids = self._index.search(self._queries(vectors), k)
        distances = np.sqrt(np.maximum(squared, 0))
        distances[ids < 0] = np.inf
        return distances, ids

    def range_search(self, vectors: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored vector closer than radius (Euclidean) to each query, nearest first.

        Approximate kinds may miss some (HNSW looks only among efSearch candidates).

        Returns:
            (lims (Q+1,) int64, distances (R,) float32, ids (R,) int64): the hits of query i are
            distances[lims[i]:lims[i+1]], as in faiss.
        """
        lims, squared, ids = self._index.range_search(self._queries(vectors), float(radius) ** 2)
        lims = lims.astype(np.int64)
        order = np.lexsort((squared, np.repeat(np.arange(len(lims) - 1), np.diff(lims))))
        return lims, np.sqrt(np.maximum(squared[order], 0)), ids[order].astype(np.int64)

    def rows(self, ids: Sequence[int] | np.ndarray) -> list[Row]:
        """The rows of those ids, in the same order.

        Raises:
            KeyError: an id (e.g. -1 padding) has no row.
        """
        return self._rows.get(ids)

    def iter_rows(self) -> Iterator[Row]:
        """Every row, by id."""
        return iter(self._rows)

    def ids(self) -> np.ndarray:
        """(N,) int64 ids of every stored vector, sorted, read from the index alone (no row is built)."""
        return index_ids(self._index)

    def vectors(self, ids: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors, read back from the index (PQ approximations for ivfpq).

        Returns:
            (ids (N,) int64, all of them sorted when ids is None; vectors (N, D) float32).
        """
        self._check_not_ondisk("it keeps no vectors to read back: run `siamsearch cluster dedup` on its embeddings")
        ids = self.ids() if ids is None else np.asarray(ids, dtype=np.int64).ravel()
        return ids, reconstruct(self._index, ids)

    def identities(self) -> int:
        """How many distinct identities the rows have, counted by SQLite rather than by reading every row."""
        return self._rows.identities()

    def info(self) -> dict[str, Any]:
        """The manifest plus what is true now: count, kind, exactness and size on disk."""
        files = [self.path / name for name in (MANIFEST, INDEX, ROWS)]
        return {**self._manifest, "path": str(self.path), "count": len(self), "index_kind": self.kind,
                "approximate": self.approximate, "bytes": sum(f.stat().st_size for f in files if f.exists())}

    def close(self) -> None:
        """Close the SQLite connection."""
        if self._rows is not None:
            self._rows.close()
            self._rows = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
