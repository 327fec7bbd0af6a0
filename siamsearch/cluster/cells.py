"""Dedup by cells on Ray (SemDeDup's shape): today's exact search inside each k-means cell, cells spread over tasks.

Each vector belongs to the cell of its nearest centroid. Take a pair within margin m, x in cell a and y in
cell b. y is on b's side of the bisector of a and b, and x, within m of y, can be at most m on a's side
of it: (|x − c_b|² − |x − c_a|²) / (2|c_a − c_b|) ≤ m. So the exact mode sends a copy of x to every cell b
that passes this test, and every cell runs siamsearch.duplicates.closepairs.find_pairs (the single-machine exact
search) over its own vectors plus the copies sent to it: the union over cells is exactly the pair set of
one flat search (until a query meets closepairs' MAX_NEIGHBOURS cap, which a cell can meet where the flat
search does not). The issue's bound, |x − c_b| ≤ |x − c_a| + 2m (the triangle inequality), is exact too,
but it sends every copy this one sends and more: in 128 dimensions, where a vector lies almost as far
from every centroid as from its own, nearly all of them.
The approximate mode sends x to its `probe` nearest cells only, which misses pairs across cells farther
away; the run measures its pair recall on a uniform sample of queries searched exactly.

Stages: a route task per shard (distances to the centroids, copies per cell, split into buckets of cells:
Ray's object store is the shuffle), a search task per bucket (pairs, written as an atomic Parquet part),
then groups on the driver with today's linkage rules (siamsearch.duplicates.linkage.group).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from ..index.ann import new_index
from ..core.atomic import write_json
from ..duplicates.closepairs import Pairs, Progress, find_pairs, unique_pairs
from ..duplicates.dedup import choose_keep, keep_ranks
from ..duplicates.linkage import group
from ..core.errors import RefusedError, UsageError
from ..index.rows import Row
from ..index.store import Store
from . import shards
from .building import finished_shards, uniform_sample

CELL_SIZE = 1_000  # vectors per cell by default: cells about as fine as the clusters keep the copies sent across few
TRAIN_PER_CELL = 50  # k-means sample per centroid
EPS = 1e-5  # float32 slack on the exactness bound
RECALL_QUERIES = 1_000  # sampled queries that measure the approximate mode's pair recall
PAIRS, GROUPS = "pairs", "groups.json"
COMMAND = "cluster dedup"


class CellStore(Store):
    """Vectors held in memory as an exact flat Store with no folder and no rows: one cell for find_pairs."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:  # not super().__init__: that reads a folder
        self.path, self._rows, self._writing, self._manifest = Path("<cell>"), None, False, {}
        self._index = new_index("flat", vectors.shape[1])
        self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))


def train_centroids(folder: Path, manifest: dict[str, Any], cells: int, seed: int = 0) -> np.ndarray:
    """(cells, D) k-means centroids trained on a uniform sample across all shards."""
    sample = uniform_sample(folder, manifest, TRAIN_PER_CELL * cells, seed)[1]
    kmeans = faiss.Kmeans(sample.shape[1], cells, niter=20, seed=seed, min_points_per_centroid=1)
    kmeans.train(sample)
    return kmeans.centroids


def route(vectors: np.ndarray, centroids: np.ndarray, margin: float, probe: int | None,
          chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(row, cell) for every cell each vector goes to: its own, and those the bisector bound (exact) or probe names.

    Exact: x in cell a goes to cell b when |x − c_b|² − |x − c_a|² ≤ 2·margin·|c_a − c_b| (see the module).

    Returns:
        (rows (R,) int64 into vectors, cells (R,) int64); rows ascending.
    """
    rows, cells = [], []
    centroids = centroids.astype(np.float64)
    c_sq = (centroids ** 2).sum(1)
    for start in range(0, len(vectors), chunk):
        x = vectors[start:start + chunk].astype(np.float64)
        d2 = np.maximum((x * x).sum(1)[:, None] + c_sq[None, :] - 2 * x @ centroids.T, 0)
        own = d2.argmin(axis=1)
        if probe is None:
            gap = np.sqrt(np.maximum(c_sq[own][:, None] + c_sq[None, :] - 2 * centroids[own] @ centroids.T, 0))
            within = d2 - d2[np.arange(len(x)), own][:, None] <= 2 * margin * gap + EPS
        else:
            within = np.zeros(d2.shape, bool)
            np.put_along_axis(within, np.argsort(d2, axis=1)[:, :probe], True, axis=1)
        r, c = np.nonzero(within)
        rows.append(r + start)
        cells.append(c)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cells).astype(np.int64)


@ray.remote
def _route_shard(folder: str, shard: int, centroids: np.ndarray, margin: float, probe: int | None,
                 buckets: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Route one shard's vectors to cells: per bucket of cells, (cells, ids, vectors) of the copies sent there."""
    ids, vectors = shards.read_vectors(Path(folder), shard)
    rows, cells = route(vectors, centroids, margin, probe)
    out = []
    for b in range(buckets):
        pick = cells % buckets == b
        out.append((cells[pick], ids[rows[pick]], vectors[rows[pick]]))
    return out if buckets > 1 else out[0]


@ray.remote
def _search_bucket(target: str, margin: float, *routed: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, int]:
    """find_pairs inside every cell of one bucket; the pairs written as one atomic Parquet part."""
    cells = np.concatenate([r[0] for r in routed])
    ids = np.concatenate([r[1] for r in routed])
    vectors = np.concatenate([r[2] for r in routed])
    order = np.argsort(cells, kind="stable")
    cells, ids, vectors = cells[order], ids[order], vectors[order]
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]]) if len(cells) else np.zeros(0, np.int64)
    parts = [find_pairs(CellStore(ids[a:b], vectors[a:b]), margin)
             for a, b in zip(starts, np.r_[starts[1:], len(cells)]) if b - a > 1]
    i, j, d = unique_pairs(*(np.concatenate(c) for c in zip(*parts))) if parts else (np.zeros(0, np.int64),) * 3
    shards.write_table(Path(target), pa.table({"i": i, "j": j, "d": np.asarray(d, np.float32)}))
    return {"copies": len(ids), "pairs": len(i)}


def cell_pairs(folder: Path, out: Path, manifest: dict[str, Any], margin: float, *, cells: int,
               probe: int | None = None, seed: int = 0, progress: Progress | None = None) -> tuple[Pairs, dict]:
    """Every pair within margin over all shards (exact when probe is None), and what the routing cost.

    Returns:
        ((i, j, d) with i < j sorted as closepairs gives them, {"cells", "buckets", "copies_per_vector"}).
    """
    done = finished_shards(folder, manifest)
    centroids = train_centroids(folder, manifest, cells, seed)
    buckets = max(1, min(cells, 2 * len(done)))
    routed = [_route_shard.options(num_returns=buckets).remote(str(folder), s, centroids, margin, probe, buckets)
              for s in done]
    routed = [r if isinstance(r, list) else [r] for r in routed]
    targets = [out / PAIRS / f"{b:05d}.parquet" for b in range(buckets)]
    pending = [_search_bucket.remote(str(t), margin, *(r[b] for r in routed)) for b, t in enumerate(targets)]
    stats, total = [], len(pending)
    while pending:
        ready, pending = ray.wait(pending)
        stats.extend(ray.get(ready))
        if progress:
            progress(total - len(pending), total)
    table = pa.concat_tables([pq.read_table(t) for t in targets])
    pairs = unique_pairs(table["i"].to_numpy(), table["j"].to_numpy(), table["d"].to_numpy())
    count = sum(manifest["finished"][str(s)]["rows"] for s in done)
    return pairs, {"cells": cells, "buckets": buckets,
                   "copies_per_vector": round(sum(s["copies"] for s in stats) / max(1, count), 3)}


@ray.remote
def _true_pairs(folder: str, shard: int, ids: np.ndarray, queries: np.ndarray, margin: float) -> np.ndarray:
    """(query id, found id) of every vector of one shard within margin of a query, itself excluded."""
    found_ids, vectors = shards.read_vectors(Path(folder), shard)
    lims, _, found = CellStore(found_ids, vectors).range_search(queries, margin)
    pairs = np.stack([np.repeat(ids, np.diff(lims)), found], axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def pair_recall(folder: Path, manifest: dict[str, Any], pairs: Pairs, margin: float,
                seed: int = 0) -> tuple[float, int]:
    """(share of the true pairs of a uniform sample of queries that pairs holds, how many true pairs that was).

    Few true pairs (rare duplicates) make the share a rough one: the count says how rough.
    """
    done = finished_shards(folder, manifest)
    ids, queries = uniform_sample(folder, manifest, RECALL_QUERIES, seed + 2)
    truth = np.concatenate(ray.get([_true_pairs.remote(str(folder), s, ids, queries, margin) for s in done]))
    if not len(truth):
        return 1.0, 0
    found = {(a, b) for a, b in zip(*(c.tolist() for c in pairs[:2]))}
    hits = sum((min(a, b), max(a, b)) in found for a, b in truth.tolist())
    return hits / len(truth), len(truth)


@ray.remote
def _members(folder: str, shard: int, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, list]]:
    """(ids, vectors, row columns) of the wanted ids one shard holds."""
    table = shards.read_shard(Path(folder), shard)
    table = table.filter(pc.is_in(table["id"], pa.array(wanted)))
    ids, vectors = shards.vectors_of(table)
    return ids, vectors, table.select(list(shards.ROW_COLUMNS)).to_pydict()


@dataclass
class CellDedupRun:
    """What `cluster dedup` found: pairs, groups (each with the file to keep), and what the routing cost."""

    out: Path
    margin: float
    mode: str  # exact, or approximate (probe cells)
    pairs: int
    groups: list[dict[str, Any]] = field(default_factory=list)
    routing: dict[str, Any] = field(default_factory=dict)
    pair_recall: float | None = None  # approximate mode, measured on a sample of queries ...
    recall_pairs: int = 0  # ... over this many true pairs
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (groups are in out/groups.json)."""
        return {"out": str(self.out), "margin": self.margin, "mode": self.mode, "pairs": self.pairs,
                "groups": len(self.groups), "duplicates": sum(len(g["members"]) for g in self.groups),
                **self.routing, "pair_recall": self.pair_recall, "recall_pairs": self.recall_pairs,
                "seconds": round(self.seconds, 3)}


def dedup_cells(folder: Path | str, out: Path | str, margin: float, *, cells: int | None = None,
                probe: int | None = None, linkage: str = "kept", keep: str = "largest", seed: int = 0,
                progress: Progress | None = None) -> CellDedupRun:
    """Pairs within margin over an embeddings folder by cells, then groups; pairs and groups.json under out.

    Raises:
        UsageError: a margin outside (0, 2], probe < 1, or shards not embedded yet. RefusedError: out is not
        empty and not `cluster dedup`'s output, or holds the pairs of other embeddings.
    """
    start = time.perf_counter()
    if not 0 < margin <= 2 or (probe is not None and probe < 1):
        raise UsageError("--margin must be in (0, 2] and --probe >= 1")
    folder, out = Path(folder).expanduser().resolve(), Path(out).expanduser().resolve()  # tasks elsewhere read them
    manifest = shards.read_manifest(folder)
    claim_pairs_folder(out, folder, shards.output_key(folder, manifest))
    count = sum(v["rows"] for v in manifest["finished"].values())
    cells = cells or max(1, count // CELL_SIZE)
    pairs, routing = cell_pairs(folder, out, manifest, margin, cells=cells, probe=probe, seed=seed, progress=progress)
    run = CellDedupRun(out, margin, "exact" if probe is None else f"approximate (probe {probe})", len(pairs[0]),
                       routing=routing)
    if probe is not None:
        recall, run.recall_pairs = pair_recall(folder, manifest, pairs, margin, seed)
        run.pair_recall = round(recall, 4)
    run.groups = _groups(folder, manifest, pairs, margin, linkage, keep)
    write_json(out / GROUPS, run.groups)
    run.seconds = time.perf_counter() - start
    return run


def claim_pairs_folder(out: Path, folder: Path, key: str) -> None:
    """Make out this run's: an earlier run's pairs and groups over the same embeddings go first, so none mix in.

    Raises:
        RefusedError: out holds files `cluster dedup` did not make, or the pairs of other embeddings.
    """
    made = shards.made_key(out, COMMAND)
    if made not in (None, key):
        raise RefusedError(f"{out} holds the pairs of other embeddings than {folder} (or of them before they "
                           "changed); choose a new or empty --out")
    shutil.rmtree(out / PAIRS, ignore_errors=True)
    (out / GROUPS).unlink(missing_ok=True)
    shards.mark_made(out, COMMAND, key)


def _groups(folder: Path, manifest: dict[str, Any], pairs: Pairs, margin: float, linkage: str,
            keep: str) -> list[dict[str, Any]]:
    """Groups of the paired ids by siamsearch.duplicates.linkage.group, each with its kept file and members by distance."""
    wanted = np.union1d(pairs[0], pairs[1])
    if not len(wanted):
        return []
    parts = ray.get([_members.remote(str(folder), s, wanted) for s in shards.finished(manifest)])
    ids = np.concatenate([p[0] for p in parts])
    order = np.argsort(ids)
    vectors = np.concatenate([p[1] for p in parts])[order]
    columns = {c: sum((p[2][c] for p in parts), []) for c in shards.ROW_COLUMNS}
    root = Path(manifest["root"])
    rows = [Row(c["id"], c["path"], root / c["path"], c["identity"], c["size"], c["mtime_ns"], c["width"],
                c["height"], c["sha256"]) for c in ({k: columns[k][n] for k in columns} for n in order)]
    ids = ids[order]
    groups = []
    for members in group(pairs, ids, vectors, margin, linkage, keep_ranks(rows, keep)):
        at = np.searchsorted(ids, members)
        kept = choose_keep([rows[a] for a in at], keep)
        k = at[[rows[a].id for a in at].index(kept.id)]
        others = sorted((float(np.linalg.norm(vectors[a] - vectors[k])), rows[a].path) for a in at if a != k)
        groups.append({"keep": kept.path, "members": [{"path": p, "distance": round(d, 6)} for d, p in others]})
    return groups
