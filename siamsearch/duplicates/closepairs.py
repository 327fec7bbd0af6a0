"""Every pair of stored vectors within a margin, in bounded memory, with no N×N matrix.

Pairs come from FAISS range searches of the stored vectors against their own index, a block of
queries at a time. Two things keep memory bounded when a collection holds many copies of one picture
(blank frames, a burst of identical shots):
  * vectors with the same bytes are collapsed: one representative searches for all of them, and the
    copies come back as one group at distance 0 (siamsearch.duplicates.dedup expands them). A vector's bytes are
    known by a 128-bit key computed with numpy as its block is read: every vector is read once, and
    only a hit in a block not read yet is read early (its key kept); at the end each copy's bytes are
    compared with its representative's, so a key collision can cost a pair but never make a false copy;
  * each query keeps at most MAX_NEIGHBOURS nearest hits (the rest are counted as capped), and the
    block shrinks when hits are dense, so one search never returns more than about HITS_PER_BLOCK.

With a torch device (device="cuda"), the range searches run as blocked distance matrices on it
(DeviceSearch): FAISS on a GPU has no range search. The FAISS search on the CPU is its oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ModelMismatchError, UsageError
from ..index.store import Store

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (ids (P,) int64, ids (P,) int64, distances (P,) float)
BLOCK = 4096  # query vectors per range search, at most
MIN_BLOCK = 16  # ... and at least
HITS_PER_BLOCK = 4_000_000  # range-search hits one block may return, about (12 bytes each)
MAX_NEIGHBOURS = 1000  # hits a query keeps; more than that within a margin is a crowd, not duplicates
Progress = Callable[[int, int], None]  # progress(done, total): stored vectors passed so far, of all there are
KEY_SEED = 20240521  # seeds the fixed random multipliers of _keys: any value, the same in every run
BASE_BLOCK = 65_536  # stored vectors per distance matrix on the device: BLOCK × BASE_BLOCK floats, 1 GiB


class DeviceSearch:
    """Every stored vector on a torch device, range-searched exactly by blocked distance matrices.

    Answers like Store.range_search (for any index kind: it reads the stored vectors back), so close_pairs
    runs unchanged on a GPU; on device="cpu" the same code is what the tests compare with FAISS.
    """

    def __init__(self, store: Store, device: torch.device | str) -> None:
        self.dim, self.device = store.dim, torch.device(device)
        self.ids, vectors = store.vectors()
        self.base = torch.from_numpy(vectors).to(self.device)
        self.norms = (self.base * self.base).sum(1)

    @torch.inference_mode()
    def range_search(self, vectors: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lims (Q+1,), distances (R,) float32, ids (R,) int64): each query's hits within radius, nearest first."""
        q = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        qn, hits = (q * q).sum(1), [(torch.zeros(0, dtype=torch.int64, device=self.device),) * 2
                                    + (torch.zeros(0, device=self.device),)]
        for start in range(0, len(self.base), BASE_BLOCK):
            base = self.base[start:start + BASE_BLOCK]
            squared = (qn[:, None] + self.norms[start:start + BASE_BLOCK][None] - 2 * q @ base.T).clamp_(min=0)
            rows, cols = torch.nonzero(squared <= float(radius) ** 2, as_tuple=True)
            hits.append((rows, cols + start, squared[rows, cols]))
        rows, cols, squared = (torch.cat(c).cpu().numpy() for c in zip(*hits))
        order = np.lexsort((squared, rows))
        lims = np.r_[0, np.cumsum(np.bincount(rows, minlength=len(q)))].astype(np.int64)
        return lims, np.sqrt(squared[order]).astype(np.float32), self.ids[cols[order]].astype(np.int64)


@dataclass
class ClosePairs:
    """The pairs within a margin among representatives, their vectors, and who stands for whom."""

    pairs: Pairs  # (i, j, d) with i < j, representative ids, sorted by (i, j)
    ids: np.ndarray  # (M,) sorted ids of the representatives in a pair or standing for copies
    vectors: np.ndarray  # (M, D) their vectors
    copies: dict[int, np.ndarray]  # representative id → every id with its exact vector (itself first), 2+ only
    capped: int  # queries that had more than MAX_NEIGHBOURS hits and kept the nearest


def _blocks(store: Store, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The stored (ids, vectors), `block` rows at a time: bounded memory at any size."""
    if block < 1:
        raise UsageError("block must be >= 1")
    ids = store.ids()
    for start in range(0, len(ids), block):
        yield store.vectors(ids[start:start + block])


def _keys(vectors: np.ndarray) -> np.ndarray:
    """(N, 2) uint64 keys of (N, D) float32 vectors: equal bytes give equal keys, other bytes other keys but by a
    chance like a 128-bit digest's. Each 32-bit word goes through splitmix64's mixer (a bijection), then into two
    sums mod 2^64 with fixed random weights: numpy over the whole block, no Python call per vector."""
    z = np.ascontiguousarray(vectors, np.float32).view(np.uint32).astype(np.uint64)
    z += np.uint64(0x9E3779B97F4A7C15)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z @ np.random.default_rng(KEY_SEED).integers(0, 2**64, (z.shape[1], 2), np.uint64, endpoint=False)


class _Keys:
    """The key of every stored vector by its position in the sorted ids, and which are copies of an earlier one.

    A block's keys are computed as it is read; a hit in a block not read yet has its vector read then (so
    at most twice in all). A hit with its query's key is a copy: it will not search, its representative did.
    """

    def __init__(self, store: Store, ids: np.ndarray, block: int) -> None:
        self.store, self.ids, self.block = store, ids, block
        self.keys = np.zeros((len(ids), 2), np.uint64)
        self.known = np.zeros(len(ids), bool)
        self.copy = np.zeros(len(ids), bool)

    def read(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        """The (ids, vectors) from position start that search: the first of their bytes in the block, not copies."""
        ids, vectors = self.store.vectors(self.ids[start:start + self.block])
        at = slice(start, start + len(ids))
        self.keys[at], self.known[at] = _keys(vectors), True
        first = np.zeros(len(ids), bool)
        first[np.unique(self.keys[at], axis=0, return_index=True)[1]] = True
        searching = first & ~self.copy[at]
        return ids[searching], vectors[searching]

    def at(self, positions: np.ndarray) -> np.ndarray:
        """(P, 2) keys at those positions, reading the vectors of those not known yet, a block at a time."""
        unknown = np.unique(positions[~self.known[positions]])
        for start in range(0, len(unknown), self.block):
            part = unknown[start:start + self.block]
            self.keys[part], self.known[part] = _keys(self.store.vectors(self.ids[part])[1]), True
        return self.keys[positions]

    def representatives(self) -> np.ndarray:
        """(N,) the first id whose vector has the same bytes as each id's (all keys are known by the end)."""
        order = np.lexsort((self.keys[:, 1], self.keys[:, 0]))  # stable: each run of one key starts at its first id
        keys = self.keys[order]
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]) if len(keys) else order
        first = np.repeat(order[starts], np.diff(np.r_[starts, len(keys)]))
        reps = np.empty_like(self.ids)
        reps[order] = self.ids[first]
        return self._verified(reps)

    def _verified(self, reps: np.ndarray) -> np.ndarray:
        """reps with every copy's bytes compared to its representative's, a block at a time: a key collision
        (a chance like a 128-bit digest's) makes the vector its own representative, so it can cost a pair but
        never report two different vectors as copies at distance 0."""
        copies = np.flatnonzero(reps != self.ids)
        for start in range(0, len(copies), self.block):
            part = copies[start:start + self.block]
            firsts, which = np.unique(reps[part], return_inverse=True)
            mine, theirs = self.store.vectors(self.ids[part])[1], self.store.vectors(firsts)[1][which]
            differ = (mine.view(np.uint32) != theirs.view(np.uint32)).any(axis=1)
            reps[part[differ]] = self.ids[part[differ]]
        return reps


Searchable = Store | DeviceSearch  # what answers range searches: FAISS on the CPU, or torch on a device


def _searcher(store: Store, device: torch.device | str | None) -> Searchable:
    """The store itself, or its vectors on `device` for a blocked search there."""
    return store if device is None else DeviceSearch(store, device)


def _search(queries: Iterator[tuple[np.ndarray, np.ndarray]], index: Searchable, margin: float,
            block: int) -> Iterator[tuple[Pairs, np.ndarray, np.ndarray]]:
    """Range-search (ids, vectors) query rows in blocks sized to the hits seen so far: (hits, ids, vectors)."""
    size = min(block, 256)
    pending_ids, pending = np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32)
    for ids, vectors in queries:
        pending_ids, pending = np.concatenate([pending_ids, ids]), np.concatenate([pending, vectors])
        while len(pending_ids) >= size:
            chunk, chunk_ids = pending[:size], pending_ids[:size]
            pending_ids, pending = pending_ids[size:], pending[size:]
            hits, size = _range(index, chunk_ids, chunk, margin, size, block)
            yield hits, chunk_ids, chunk
    if len(pending_ids):
        yield _range(index, pending_ids, pending, margin, size, block)[0], pending_ids, pending


def _range(index: Searchable, ids: np.ndarray, vectors: np.ndarray, margin: float, size: int,
           block: int) -> tuple[Pairs, int]:
    """One range search, and the next block size: what keeps the next one near HITS_PER_BLOCK hits."""
    lims, distances, found = index.range_search(vectors, margin)
    per_query = max(1.0, len(found) / max(1, len(ids)))
    return (np.repeat(ids, np.diff(lims)), found, distances), int(np.clip(HITS_PER_BLOCK / per_query, MIN_BLOCK, block))


def _once_per_query(query: np.ndarray, found: np.ndarray, d: np.ndarray, keys: np.ndarray) -> Pairs:
    """Each query's hit of each distinct vector (keys: the hits' (P, 2) keys) once, at its smallest distance,
    sorted by query, then distance."""
    order = np.lexsort((d, keys[:, 1], keys[:, 0], query))
    query, found, d, keys = query[order], found[order], d[order], keys[order]
    new = (query[1:] != query[:-1]) | (keys[1:] != keys[:-1]).any(axis=1)
    first = np.r_[True, new] if len(query) else np.zeros(0, bool)
    query, found, d = query[first], found[first], d[first]
    order = np.lexsort((d, query))
    return query[order], found[order], d[order]


def _nearest_per_query(query: np.ndarray, found: np.ndarray, d: np.ndarray) -> tuple[Pairs, np.ndarray]:
    """Each query's nearest MAX_NEIGHBOURS hits (inputs sorted by query, then distance); the queries that lost some."""
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]]) if len(query) else np.zeros(0, np.int64)
    rank = np.arange(len(query)) - np.repeat(starts, np.diff(np.r_[starts, len(query)]))
    keep = rank < MAX_NEIGHBOURS
    return (query[keep], found[keep], d[keep]), np.unique(query[~keep])


def unique_pairs(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> Pairs:
    """Each unordered pair once (i < j), at its smallest distance, sorted by (i, j)."""
    i, j = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((d, j, i))
    i, j, d = i[order], j[order], d[order]
    first = np.r_[True, (i[1:] != i[:-1]) | (j[1:] != j[:-1])] if len(i) else np.zeros(0, bool)
    return i[first], j[first], d[first]


def close_pairs(store: Store, margin: float, *, block: int = BLOCK, progress: Progress | None = None,
                device: torch.device | str | None = None) -> ClosePairs:
    """The pairs of distinct stored vectors within margin, exact copies collapsed, each vector read once.

    On approximate kinds a pair counts when either image finds the other, which recovers some misses.
    device: search by blocked distances on this torch device (exact on every kind); None: FAISS.
    progress(done, total) is called after each block searched with the stored vectors passed so far.
    """
    if block < 1:
        raise UsageError("block must be >= 1")
    ids = store.ids()  # sorted: a position is a binary search, not a dict per hit
    keys = _Keys(store, ids, block)
    parts, kept_ids, kept_vectors, lost, done = [], [], [], [], 0
    searching = (keys.read(start) for start in range(0, len(ids), block))
    for (query, found, d), part, vectors in _search(searching, _searcher(store, device), margin, block):
        at, found_at = np.searchsorted(ids, query), np.searchsorted(ids, found)
        found_keys = keys.at(found_at)
        same = (found_keys == keys.keys[at]).all(axis=1)
        keys.copy[found_at[same & (found_at > at)]] = True
        nearest, capped = _nearest_per_query(*_once_per_query(query[~same], found[~same], d[~same], found_keys[~same]))
        parts.append(nearest)
        lost.append(capped)
        paired = np.isin(part, nearest[0])
        kept_ids.append(part[paired])
        kept_vectors.append(vectors[paired])
        if progress and len(part):
            done = int(np.searchsorted(ids, part[-1])) + 1
            progress(done, len(ids))
    if progress and done < len(ids):  # the last vectors were copies, which do not search
        progress(len(ids), len(ids))
    reps = keys.representatives()
    rep = lambda x: reps[np.searchsorted(ids, x)]  # noqa: E731 - the representative of each id in x
    i, j, d = (np.concatenate(c) for c in zip(*parts)) if parts else _empty()
    pairs = unique_pairs(rep(i), rep(j), d)
    capped = np.unique(rep(np.concatenate([np.zeros(0, np.int64), *lost]))).size
    return _with_vectors(store, pairs, _copies(ids, reps), [rep(k) for k in kept_ids], kept_vectors, capped)


def _empty() -> Pairs:
    """No pairs."""
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _copies(ids: np.ndarray, reps: np.ndarray) -> dict[int, np.ndarray]:
    """Representative → all ids sharing its vector (itself first), for representatives with copies."""
    order = np.lexsort((ids, reps))
    ids, reps = ids[order], reps[order]
    starts = np.flatnonzero(np.r_[True, reps[1:] != reps[:-1]]) if len(reps) else np.zeros(0, np.int64)
    groups = np.split(ids, starts[1:])
    return {int(g[0]): g for g in groups if len(g) > 1}


def _with_vectors(store: Store, pairs: Pairs, copies: dict[int, np.ndarray], kept_ids: list[np.ndarray],
                  kept_vectors: list[np.ndarray], capped: int) -> ClosePairs:
    """Sorted ids and vectors of every representative in a pair or with copies; only a missing one is read again.

    kept_ids may name one representative twice (its copy searched too, from a block read before it was known)."""
    ids = np.concatenate(kept_ids) if kept_ids else np.zeros(0, np.int64)
    vectors = np.concatenate(kept_vectors) if kept_vectors else np.zeros((0, store.dim), np.float32)
    wanted = np.union1d(np.concatenate(pairs[:2]), np.fromiter(copies, np.int64, len(copies)))
    missing = np.setdiff1d(wanted, ids)
    if missing.size:
        ids, vectors = np.concatenate([ids, missing]), np.concatenate([vectors, store.vectors(missing)[1]])
    ids, first = np.unique(ids, return_index=True)
    return ClosePairs(pairs, ids, vectors[first], copies, capped)


def find_pairs(store: Store, margin: float, *, block: int = BLOCK) -> Pairs:
    """Every pair of stored images within margin, each once; copies of one vector pair at distance 0.

    Returns:
        (i (P,) int64, j (P,) int64, distances (P,) float32) with i < j, sorted by (i, j).
    """
    found = close_pairs(store, margin, block=block)
    if not found.copies:
        return found.pairs
    members = lambda rep: found.copies.get(rep, np.array([rep]))  # noqa: E731 - a representative and its copies
    parts = [found.pairs]
    for i, j, d in zip(*(c.tolist() for c in found.pairs)):
        a, b = np.meshgrid(members(i), members(j))
        parts.append((a.ravel(), b.ravel(), np.full(a.size, d, np.float32)))
    for same in found.copies.values():
        i, j = np.triu_indices(len(same), 1)
        parts.append((same[i], same[j], np.zeros(len(i), np.float32)))
    return unique_pairs(*(np.concatenate(c) for c in zip(*parts)))


def check_same_model(store: Store, other: Store) -> None:
    """Refuse to compare indexes of two encoders: their distances mean nothing to each other.

    Raises:
        ModelMismatchError: the fingerprints differ.
    """
    if store.fingerprint != other.fingerprint:
        raise ModelMismatchError(f"{store.path} and {other.path} were built by different models "
                                 f"({store.fingerprint[:12]} and {other.fingerprint[:12]}); re-index one with the other's")


def find_cross_pairs(store: Store, other: Store, margin: float, *, block: int = BLOCK,
                     device: torch.device | str | None = None) -> Pairs:
    """Every (image of store, image of other) pair within margin, each image's nearest MAX_NEIGHBOURS at most.

    Returns:
        (ids in store (P,) int64, ids in other (P,) int64, distances (P,) float32), by store id then distance.

    Raises:
        ModelMismatchError: the two indexes were built by different models.
    """
    check_same_model(store, other)
    parts = [_nearest_per_query(*hits)[0]
             for hits, _, _ in _search(_blocks(store, block), _searcher(other, device), margin, block)]
    return tuple(np.concatenate(c) for c in zip(*parts)) if parts else _empty()  # type: ignore[return-value]
