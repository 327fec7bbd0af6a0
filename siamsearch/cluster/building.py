"""Building one on-disk IVF index from embedding shards with Ray tasks: autofaiss's recipe in FAISS calls.

1. Train the quantizer (and PQ codebooks) on a uniform random sample drawn across all shards, not the first N.
2. Add each shard into its own small index with that trained quantizer (add_with_ids, one Ray task a shard):
   blocks/NNNNN.faiss, written atomically and kept until the merge, so a re-run only builds the missing ones;
   only a re-run over the same embeddings with the same kind and seed (made_by.json's key): another starts over.
3. faiss.contrib.ondisk.merge_ondisk the blocks into index.ivfdata (inverted lists, read through mmap), tune
   nprobe against exact neighbours found shard by shard, and write an ordinary index folder beside it:
   index.faiss, rows.sqlite and manifest.json. `siamsearch query --index DIR` opens it as any other index.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import ray
from faiss.contrib.ondisk import merge_ondisk

from ..index.ann import TUNE_QUERIES, new_index, train_size, tune_to_truth
from ..core.atomic import write_atomic, write_json
from ..duplicates.closepairs import Progress
from ..core.errors import UsageError
from ..index.folder import MANIFEST, ROWS, now, write_index
from ..index.rows import NewRow, RowTable
from ..index.store import Store
from . import shards

BLOCKS, TRAINED, IVFDATA = "blocks", "trained.faiss", "index.ivfdata"
KINDS = ("ivf", "ivfpq")
COMMAND = "cluster index"
TUNE_K = 10


@dataclass
class BuildRun:
    """What `cluster index` built."""

    index: Path
    kind: str
    count: int
    nlist: int
    shards: int
    reused_blocks: int  # blocks an earlier, interrupted run had built
    tuning: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary."""
        return {"index": str(self.index), "kind": self.kind, "count": self.count, "nlist": self.nlist,
                "shards": self.shards, "reused_blocks": self.reused_blocks, "search": self.tuning,
                "seconds": round(self.seconds, 3)}


def finished_shards(folder: Path, manifest: dict[str, Any]) -> list[int]:
    """Every planned shard, all finished.

    Raises:
        UsageError: some shards are not embedded yet.
    """
    done = shards.finished(manifest)
    if len(done) != len(manifest["shards"]):
        raise UsageError(f"{len(manifest['shards']) - len(done)} of {len(manifest['shards'])} shards of {folder} "
                         "are not embedded yet; run `siamsearch cluster embed` again first")
    return done


@ray.remote
def _take(folder: str, shard: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) at those positions of a shard (ids ascending)."""
    ids, vectors = shards.read_vectors(Path(folder), shard)
    return ids[positions], vectors[positions]


def uniform_sample(folder: Path, manifest: dict[str, Any], size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids (S,), vectors (S, D) float32) drawn uniformly without replacement from all shards together."""
    done = finished_shards(folder, manifest)
    counts = np.array([manifest["finished"][str(s)]["rows"] for s in done], np.int64)
    picks = np.sort(np.random.default_rng(seed).choice(counts.sum(), min(size, counts.sum()), replace=False))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    owner = np.searchsorted(starts, picks, side="right") - 1
    refs = [_take.remote(str(folder), s, picks[owner == n] - starts[n]) for n, s in enumerate(done)
            if (owner == n).any()]
    parts = ray.get(refs)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@ray.remote
def _add_block(folder: str, shard: int, trained: bytes, target: str) -> int:
    """Add one shard to a copy of the trained empty index and write it as an immutable block."""
    index = faiss.deserialize_index(np.frombuffer(trained, np.uint8))
    ids, vectors = shards.read_vectors(Path(folder), shard)
    index.add_with_ids(vectors, ids)
    write_atomic(target, lambda tmp: faiss.write_index(index, tmp))
    return len(ids)


@ray.remote
def _nearest(folder: str, shard: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest of each query within one shard: (squared distances, ids), (Q, k) each."""
    ids, vectors = shards.read_vectors(Path(folder), shard)
    squared, found = faiss.knn(queries, vectors, min(k, len(ids)))
    return squared, ids[found]


def exact_neighbours(folder: Path, done: list[int], queries: np.ndarray, k: int) -> np.ndarray:
    """The true k nearest ids of each query over all shards: per-shard exact searches, merged. (Q, k) int64."""
    parts = ray.get([_nearest.remote(str(folder), s, queries, k) for s in done])
    squared = np.concatenate([p[0] for p in parts], axis=1)
    found = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, order, axis=1)


def trained_index(folder: Path, out: Path, manifest: dict[str, Any], kind: str, count: int, seed: int) -> faiss.Index:
    """The empty index trained on a uniform sample, saved as blocks/trained.faiss; an earlier run's is reused."""
    path = out / BLOCKS / TRAINED
    if path.exists():
        return faiss.read_index(str(path))
    index = new_index(kind, manifest["dim"], count)
    index.set_direct_map_type(faiss.DirectMap.NoMap)  # an id → slot table of every vector would not fit at 1B
    index.train(uniform_sample(folder, manifest, train_size(index), seed)[1])
    write_atomic(path, lambda tmp: faiss.write_index(index, tmp))
    return index


@contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """FAISS's on-disk lists print "resizing ..." with C's printf: send it to stderr, so --json stays clean."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        libc.fflush(None)  # C's stdout buffer, written while fd 1 is still stderr
        os.dup2(saved, 1)
        os.close(saved)


def build_cluster_index(folder: Path | str, out: Path | str, *, kind: str = "ivf", seed: int = 0,
                        progress: Progress | None = None) -> BuildRun:
    """Build an on-disk IVF index of every vector in an embeddings folder, as an index folder `query` opens.

    Raises:
        UsageError: an unknown kind, or shards not embedded yet. NotFoundError: not an embeddings folder.
        RefusedError: out is not empty and not an index (or interrupted build) of `siamsearch cluster index`.
    """
    start = time.perf_counter()
    if kind not in KINDS:
        raise UsageError(f"cluster index builds {' or '.join(KINDS)}, not {kind!r}")
    folder, out = Path(folder).expanduser().resolve(), Path(out).expanduser().resolve()  # tasks elsewhere read them
    manifest = shards.read_manifest(folder)
    done = finished_shards(folder, manifest)
    count = sum(manifest["finished"][str(s)]["rows"] for s in done)
    claim_index_folder(out, shards.output_key(folder, manifest, kind=kind, seed=seed))
    index = trained_index(folder, out, manifest, kind, count, seed)
    trained = faiss.serialize_index(index).tobytes()
    targets = {s: out / BLOCKS / f"{s:05d}.faiss" for s in done}
    missing = [s for s in done if not targets[s].exists()]
    pending = [_add_block.remote(str(folder), s, trained, str(targets[s])) for s in missing]
    while pending:
        ready, pending = ray.wait(pending)
        if progress:
            progress(len(missing) - len(pending), len(missing))
    _write_rows(folder, out, manifest, done, kind)
    (out / IVFDATA).unlink(missing_ok=True)
    with _c_stdout_to_stderr():
        merge_ondisk(index, [str(targets[s]) for s in done], str(out / IVFDATA))
    queries = uniform_sample(folder, manifest, TUNE_QUERIES, seed + 1)[1]
    tuning = {**tune_to_truth(index, queries, exact_neighbours(folder, done, queries, TUNE_K)), "n": count}
    write_index(out, index)
    _finish_manifest(out, index, tuning)
    shutil.rmtree(out / BLOCKS)
    return BuildRun(out, kind, int(index.ntotal), int(index.nlist), len(done), len(done) - len(missing), tuning,
                    time.perf_counter() - start)


def claim_index_folder(out: Path, key: str) -> None:
    """Make out this build's: blocks an interrupted build left are kept only when made from the same key.

    Raises:
        RefusedError: out holds files `cluster index` did not make (an embeddings folder, another index).
    """
    if shards.made_key(out, COMMAND) != key:
        shutil.rmtree(out / BLOCKS, ignore_errors=True)
        shards.mark_made(out, COMMAND, key)


def _write_rows(folder: Path, out: Path, manifest: dict[str, Any], done: list[int], kind: str) -> None:
    """A fresh index folder (siamsearch.index.store's files) holding every shard's rows under their shard ids."""
    Store.create(out, dim=manifest["dim"], fingerprint=manifest["fingerprint"], encoder=manifest["encoder"],
                 model_path=manifest["model"], root=manifest["root"], index_kind=kind, overwrite=True).close()
    table = RowTable(out / ROWS, Path(manifest["root"]))
    try:
        for s in done:
            rows = shards.read_shard(folder, s, shards.ROW_COLUMNS[1:]).to_pydict()
            table.insert(rows["id"], [NewRow(*values) for values in zip(*(rows[c] for c in shards.ROW_COLUMNS[1:]))])
        table.commit()
    finally:
        table.close()


def _finish_manifest(out: Path, index: faiss.Index, tuning: dict[str, Any]) -> None:
    """Record the merged index's kind, search setting and count in the folder's manifest."""
    manifest = json.loads((out / MANIFEST).read_text())
    manifest.update(index_kind="ivfpq" if isinstance(index, faiss.IndexIVFPQ) else "ivf", search=tuning,
                    count=int(index.ntotal), updated=now(), ondisk=IVFDATA)
    write_json(out / MANIFEST, manifest)

