"""Approximate nearest-neighbour index kinds: building, tuning and reading FAISS indexes.

Kinds: flat is exact. hnsw, ivf and ivfpq are approximate: build_index tunes their efSearch or nprobe
to reach TARGET_RECALL on vectors held out of the build. ivfpq stores compressed vectors: its recall
stays below the target and `reconstruct` returns approximations, so auto never picks it. Every kind
holds vectors under int64 ids (IndexIDMap2 for flat and hnsw, IVF's own ids) and, as FAISS does,
measures squared L2 distance.

Free functions, no state: siamsearch.index.store keeps one of these indexes on disk, and
scripts/bench_search.py times them.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

KINDS = ("flat", "hnsw", "ivf", "ivfpq")
AUTO_APPROX_MIN = 200_000  # auto: exact flat search below this many vectors, ivf above
MIN_TRAIN = {"ivf": 1_000, "ivfpq": 10_000}  # IVF kinds stay flat (exact) until this many vectors exist
TRAIN_PER_LIST = 50  # k-means sample: points per inverted list (FAISS wants at least 39)
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 40
TARGET_RECALL = 0.95
TUNE_QUERIES = 500  # held-out vectors that tune an approximate index when it is built
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


# ---- building ------------------------------------------------------------------------------------


def nlist_for(n: int) -> int:
    """About 4·sqrt(n) inverted lists, each with at least 39 training points (FAISS warns below)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def plan_kind(requested: str, n: int) -> str:
    """The kind an index of n vectors gets: auto by size; IVF kinds wait as flat until trainable."""
    kind = requested if requested != "auto" else ("flat" if n < AUTO_APPROX_MIN else "ivf")
    return "flat" if n < MIN_TRAIN.get(kind, 0) else kind


def new_index(kind: str, dim: int, n: int = 0) -> faiss.Index:
    """An empty L2 index of one kind, sized for about n vectors (IVF kinds still need training)."""
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return faiss.IndexIDMap2(hnsw)  # HNSW cannot remove: deletions rebuild it
    if kind not in ("ivf", "ivfpq"):
        raise ValueError(f"unknown index kind {kind!r}; choose one of auto, {', '.join(KINDS)}")
    quantizer = faiss.IndexFlatL2(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist_for(n))
    else:  # 4 dimensions per byte-sized sub-quantizer: 16x smaller than float32
        m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist_for(n), m, 8)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
    return index


def build_index(kind: str, ids: np.ndarray, vectors: np.ndarray, *, target: float = TARGET_RECALL,
                seed: int = 0) -> tuple[faiss.Index, dict[str, Any]]:
    """An index of one kind holding vectors (N, D) float32 under int64 ids, trained and tuned.

    IVF kinds train on a random sample. Approximate kinds hold back up to TUNE_QUERIES random vectors, tune
    their search setting with them as unseen queries (tune_index), then add them too.

    Returns:
        (index, tuning): tuning is {"setting", "value", "recall", "n"}, or {} for flat.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n = len(vectors)
    index = new_index(kind, vectors.shape[1], n)
    if kind == "flat":
        index.add_with_ids(vectors, ids)
        return index, {}
    order = np.random.default_rng(seed).permutation(n)
    held, rest = np.sort(order[:min(TUNE_QUERIES, n // 10)]), np.sort(order[min(TUNE_QUERIES, n // 10):])
    if not index.is_trained:
        index.train(vectors[np.sort(order[:train_size(index)])])
    base_ids, base = ids[rest], vectors[rest]
    index.add_with_ids(base, base_ids)
    tuning = tune_index(index, base_ids, base, vectors[held], target=target)
    index.add_with_ids(vectors[held], ids[held])
    return index, {**tuning, "n": n}


def train_size(index: faiss.Index) -> int:
    """How many vectors an IVF kind trains on: TRAIN_PER_LIST per list (and 256 × 39 for PQ's codebooks)."""
    return max(TRAIN_PER_LIST * index.nlist, 256 * 39 if kind_of(index) == "ivfpq" else 0)


# ---- tuning --------------------------------------------------------------------------------------


def tune_index(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, *, k: int = 10,
               target: float = TARGET_RECALL) -> dict[str, Any]:
    """Set the cheapest efSearch / nprobe at which the index finds `target` of the true k nearest.

    Stops early where more effort stops paying (ivfpq's compression caps its recall below target).

    Args:
        ids, vectors: what the index holds, (N,) int64 and (N, D) float32, for the exact answers.
        queries: (Q, D) float32 vectors the index does not hold. Stored vectors would flatter HNSW,
            whose graph already links each of them to its neighbours.

    Returns:
        {"setting": "efSearch" or "nprobe", "value": the chosen one, "recall": its recall@k},
        or {} for flat and when there is nothing to tune on.
    """
    if search_setting(index) is None or not len(queries) or not len(vectors):
        return {}
    k = min(k, len(vectors))
    truth = ids[faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), vectors, k)[1]]
    return tune_to_truth(index, queries, truth, target=target)


def tune_to_truth(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, *,
                  target: float = TARGET_RECALL) -> dict[str, Any]:
    """tune_index given the true k nearest ids of each query, (Q, k) int64, however they were found.

    siamsearch.cluster finds them shard by shard; tune_index over the vectors it holds.
    """
    setting = search_setting(index)
    if setting is None or not len(queries):
        return {}
    queries, k = np.ascontiguousarray(queries, dtype=np.float32), truth.shape[1]
    chosen, best = setting[1], -1.0
    for value in _candidates(index):
        set_search_setting(index, value)
        found = index.search(queries, k)[1]
        recall = float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())
        if recall < best + 0.001:  # plateau: keep the cheaper setting
            break
        chosen, best = value, recall
        if recall >= target:
            break
    set_search_setting(index, chosen)
    return {"setting": setting[0], "value": chosen, "recall": round(best, 4)}


def search_setting(index: faiss.Index) -> tuple[str, int] | None:
    """The speed/recall knob of an approximate index and its value; None for flat."""
    inner, kind = _inner(index), kind_of(index)
    if kind == "hnsw":
        return "efSearch", inner.hnsw.efSearch
    return None if kind == "flat" else ("nprobe", inner.nprobe)


def set_search_setting(index: faiss.Index, value: int) -> None:
    """Set efSearch (hnsw) or nprobe (ivf kinds); it is saved inside the index file."""
    inner = _inner(index)
    if kind_of(index) == "hnsw":
        inner.hnsw.efSearch = int(value)
    else:
        inner.nprobe = int(value)


def _candidates(index: faiss.Index) -> list[int]:
    """Search settings to try, cheapest first, ending with the most thorough."""
    if kind_of(index) == "hnsw":
        return list(EF_SEARCH)
    values, v = [], 1
    while v < index.nlist:
        values.append(v)
        v = max(v + 1, int(v * 1.4))
    return values + [index.nlist]


# ---- reading -------------------------------------------------------------------------------------


def _inner(index: faiss.Index) -> faiss.Index:
    """The index under an IndexIDMap2, or the index itself."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def kind_of(index: faiss.Index) -> str:
    """flat, hnsw, ivf or ivfpq, read from the FAISS types.

    Raises:
        ValueError: an index type none of the kinds builds.
    """
    inner = _inner(index)
    for cls, kind in ((faiss.IndexHNSW, "hnsw"), (faiss.IndexIVFPQ, "ivfpq"), (faiss.IndexIVFFlat, "ivf"),
                      (faiss.IndexFlat, "flat")):
        if isinstance(inner, cls):
            return kind
    raise ValueError(f"unexpected FAISS index type {type(inner).__name__}")


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id the index holds, sorted: (N,) int64."""
    if isinstance(index, faiss.IndexIDMap2):
        return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    lists = index.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(index.nlist) if lists.list_size(i)]
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of those ids: (N, D) float32 (PQ approximations for ivfpq).

    Raises:
        KeyError: an id the index does not hold.
    """
    if not len(ids):
        return np.zeros((0, index.d), np.float32)
    try:
        return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
    except RuntimeError:
        raise KeyError("some ids are not in the index") from None
