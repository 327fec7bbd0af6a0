"""Margin search over stored vectors → groups → which file to keep.

Works on the embeddings a Store already holds: nothing is embedded again. Two images are duplicates
when the Euclidean distance of their embeddings is within the margin (by default the one calibrated
into the model that built the index: see calibrated_margin). A wider review margin adds a "needs
review" band.

Pairs come from FAISS range searches of the stored vectors against their own index, one block of
queries at a time, so memory holds one block and the pairs found, never an N×N matrix. Pairs then
become groups: complete linkage (every member within the margin of every other; the default) or
single linkage (connected components, which chain). Each group keeps one file by a policy and lists
the others with their distance to it. siamsearch.moves moves the duplicates out of the way and back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from .errors import UsageError
from .rows import Row
from .errors import ModelMismatchError
from .store import Store

Status = Literal["duplicate", "review"]
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (ids (P,) int64, ids (P,) int64, distances (P,) float)
BLOCK = 4096  # query vectors per range search
MAX_DISTANCE = 2.0  # Euclidean distance of opposite unit vectors
LINKAGES = ("single", "complete")
KEEP_ORDER: dict[str, Callable[[Row], tuple]] = {  # the kept file sorts first
    "largest": lambda r: (-r.width * r.height, -r.size, r.path),
    "smallest": lambda r: (r.width * r.height, r.size, r.path),
    "newest": lambda r: (-r.mtime_ns, r.path),
    "oldest": lambda r: (r.mtime_ns, r.path),
    "first": lambda r: (r.path,),
}


class DedupError(UsageError):
    """Dedup cannot run as asked; the message is one line saying what to do."""


@dataclass(frozen=True)
class Member:
    """A file of a group other than the kept one, with its distance to the kept file."""

    row: Row
    distance: float
    status: Status

    @property
    def path(self) -> str:
        """Relative to the index root."""
        return self.row.path


@dataclass(frozen=True)
class Group:
    """Images within the margin: the one to keep, the others nearest first, the largest inner distance."""

    keep: Row
    max_distance: float
    members: list[Member]


@dataclass(frozen=True)
class CrossPair:
    """An image of this index and its duplicate in the other one."""

    path: str
    other_path: str
    distance: float
    status: Status


@dataclass(frozen=True)
class DedupResult:
    """The groups of one index; paths are relative to root."""

    FIELDS: ClassVar[tuple[str, ...]] = ("group", "keep", "path", "distance", "status")  # of records()
    root: Path
    margin: float
    review_margin: float
    approximate: bool
    groups: list[Group]
    pairs: int  # pairs found within the review margin, the edges the groups were formed from
    # Pairs within the margin that the groups do not show as (kept file, duplicate) or two duplicates of one
    # kept file: complete linkage refused to merge their groups, or the review band put them in one group
    # beside a third file. Listed so that no duplicate is ever hidden.
    links: list[CrossPair] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: margins, approximate, groups of {keep, max_distance, members}, links."""
        return {"margin": self.margin, "review_margin": self.review_margin, "approximate": self.approximate,
                "groups": [{"keep": g.keep.path, "max_distance": round(g.max_distance, 6),
                            "members": [{"path": m.path, "distance": round(m.distance, 6), "status": m.status}
                                        for m in g.members]} for g in self.groups],
                "links": [{"path": p.path, "other_path": p.other_path, "distance": round(p.distance, 6)}
                          for p in self.links]}

    def records(self) -> list[dict[str, Any]]:
        """One flat record per member, then one per link (no group; its other file under keep), for CSV."""
        members = [{"group": n, "keep": g.keep.path, "path": m.path, "distance": round(m.distance, 6),
                    "status": m.status} for n, g in enumerate(self.groups, start=1) for m in g.members]
        return members + [{"group": "", "keep": p.other_path, "path": p.path, "distance": round(p.distance, 6),
                           "status": p.status} for p in self.links]


@dataclass(frozen=True)
class CrossResult:
    """Images of one index with a duplicate in another (e.g. test images leaked into training data)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("path", "other_path", "distance", "status")  # of records()
    margin: float
    review_margin: float
    approximate: bool
    pairs: list[CrossPair]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: margins, approximate, pairs of {path, other_path, distance, status}."""
        return {"margin": self.margin, "review_margin": self.review_margin, "approximate": self.approximate,
                "pairs": self.records()}

    def records(self) -> list[dict[str, Any]]:
        """One flat record per pair, for CSV."""
        return [{"path": p.path, "other_path": p.other_path, "distance": round(p.distance, 6), "status": p.status}
                for p in self.pairs]


# ---- margins -------------------------------------------------------------------------------------


def calibrated_margin(calibration: Mapping[str, Any]) -> float:
    """Dedup's default margin from a model's calibration: best F1, capped at the target-recall distance.

    The best-F1 distance is fitted on balanced same/different pairs. On near-duplicate copies it
    reaches for the last few percent of same pairs (a brightened, cropped copy), where a collection,
    with far more different pairs than same ones, pays for it in merged groups. The recall distance
    needs no negatives, so calibration folders whose labels split look-alikes (tiles of one photo)
    do not pull it in. On identity data the recall distance lies beyond best F1 and changes nothing.
    Model files calibrated before the recall distance was stored use best F1 alone.
    """
    return float(min(calibration["threshold_best_f1"], calibration.get("threshold_at_recall", math.inf)))


def _margins(margin: float, review_margin: float | None) -> float:
    """The review margin (margin when None), after checking 0 < margin <= review margin <= 2.

    Distances between unit vectors are at most MAX_DISTANCE: a larger margin would group everything.
    """
    review = margin if review_margin is None else review_margin
    if not 0 < margin <= review <= MAX_DISTANCE:
        raise DedupError(f"need 0 < margin <= review margin <= {MAX_DISTANCE:g} (distances between unit vectors "
                         f"are at most 2), got {margin} and {review}")
    return review


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    """An unknown option fails at once, before any search."""
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _status(distance: float, margin: float) -> Status:
    """duplicate within the margin, review beyond it."""
    return "duplicate" if distance <= margin else "review"


# ---- pairs ---------------------------------------------------------------------------------------


def _blocks(store: Store, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The stored (ids, vectors), `block` rows at a time: bounded memory at any size."""
    if block < 1:
        raise ValueError("block must be >= 1")
    ids = np.fromiter((row.id for row in store.iter_rows()), np.int64)
    for start in range(0, len(ids), block):
        yield store.vectors(ids[start:start + block])


def _search_blocks(store: Store, index: Store, margin: float,
                   block: int) -> Iterator[tuple[Pairs, np.ndarray, np.ndarray]]:
    """Each block's hits within margin, (query id, found id, distance), with the block's ids and vectors."""
    for ids, queries in _blocks(store, block):
        lims, distances, found = index.range_search(queries, margin)
        yield (np.repeat(ids, np.diff(lims)), found, distances), ids, queries


def _concat(parts: list[Pairs]) -> Pairs:
    """Join the blocks' pairs into three arrays."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


def find_pairs(store: Store, margin: float, *, block: int = BLOCK) -> Pairs:
    """Every pair of stored images within margin, each once.

    On approximate kinds a pair counts when either image finds the other, which recovers some misses.

    Returns:
        (i (P,) int64, j (P,) int64, distances (P,) float32) with i < j, sorted by (i, j).
    """
    return _pairs_and_vectors(store, margin, block)[0]


def _pairs_and_vectors(store: Store, margin: float, block: int) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """find_pairs, plus the sorted ids in a pair and their vectors, kept from the search pass itself.

    A vector is read back from the index once: grouping needs the vectors of paired images, and the
    search already holds them. Only an id that no query of its own paired (an approximate index's
    one-sided hit) is read again.
    """
    parts, kept_ids, kept_vectors = [], [], []
    for (query, found, distances), ids, vectors in _search_blocks(store, store, margin, block):
        other = found != query
        parts.append((np.minimum(query, found)[other], np.maximum(query, found)[other], distances[other]))
        paired = np.isin(ids, query[other])
        kept_ids.append(ids[paired])
        kept_vectors.append(vectors[paired])
    i, j, d = _concat(parts)
    order = np.lexsort((d, j, i))
    i, j, d = i[order], j[order], d[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    pairs = (i[first], j[first], d[first])
    ids = np.concatenate(kept_ids) if kept_ids else np.zeros(0, np.int64)
    vectors = np.concatenate(kept_vectors) if kept_vectors else np.zeros((0, store.dim), np.float32)
    missing = np.setdiff1d(np.concatenate(pairs[:2]), ids)
    if missing.size:
        ids, vectors = np.concatenate([ids, missing]), np.concatenate([vectors, store.vectors(missing)[1]])
    order = np.argsort(ids)
    return pairs, ids[order], vectors[order]


def check_same_model(store: Store, other: Store) -> None:
    """Refuse to compare indexes of two encoders: their distances mean nothing to each other.

    Raises:
        ModelMismatchError: the fingerprints differ.
    """
    if store.fingerprint != other.fingerprint:
        raise ModelMismatchError(f"{store.path} and {other.path} were built by different models "
                                 f"({store.fingerprint[:12]} and {other.fingerprint[:12]}); re-index one with the other's")


def find_cross_pairs(store: Store, other: Store, margin: float, *, block: int = BLOCK) -> Pairs:
    """Every (image of store, image of other) pair within margin.

    Returns:
        (ids in store (P,) int64, ids in other (P,) int64, distances (P,) float32), by store id then distance.

    Raises:
        ModelMismatchError: the two indexes were built by different models.
    """
    check_same_model(store, other)
    return _concat([hits for hits, _, _ in _search_blocks(store, other, margin, block)])


# ---- groups --------------------------------------------------------------------------------------


def _root(parent: list[int], x: int) -> int:
    """Union-find root of x, halving the path on the way."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _components(nodes: np.ndarray, parent: list[int]) -> list[np.ndarray]:
    """The ids of each union-find set of two or more, each sorted, sets ordered by their first id."""
    roots = np.array([_root(parent, x) for x in range(len(nodes))], np.int64)
    order = np.argsort(roots, kind="stable")
    sets = np.split(nodes[order], np.flatnonzero(np.diff(roots[order])) + 1)
    return sorted((s for s in sets if len(s) > 1), key=lambda s: s[0])


def max_distance(a: np.ndarray, b: np.ndarray, block: int = 1024) -> float:
    """Largest Euclidean distance between a row of a (M, D) and a row of b (K, D), in blocks of a's rows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    b_sq, worst = (b * b).sum(1), 0.0
    for start in range(0, len(a), block):
        part = a[start:start + block]
        squared = (part * part).sum(1)[:, None] + b_sq[None, :] - 2 * part @ b.T
        worst = max(worst, float(squared.max(initial=0.0)))
    return float(np.sqrt(worst))


def group(pairs: Pairs, ids: np.ndarray, vectors: np.ndarray, margin: float,
          linkage: str = "complete") -> list[np.ndarray]:
    """Turn pairs into groups of ids (each sorted; groups ordered by their first id).

    single: connected components, which chain (A~B and B~C put A and C together however far apart).
    complete: pairs are merged in ascending distance, and two clusters join only when every cross pair
    is within margin (computed from the vectors), so no two members of a group are farther apart.

    Args:
        pairs: (i, j, distances) as find_pairs returns them.
        ids, vectors: (M,) sorted int64 ids, covering every id in pairs, and their (M, D) vectors.
    """
    _check_choice(linkage, LINKAGES, "linkage")
    return _link(pairs, ids, vectors, margin, linkage)


def _link(pairs: Pairs, ids: np.ndarray, vectors: np.ndarray, margin: float, linkage: str) -> list[np.ndarray]:
    """group() on checked arguments: union-find over pairs in ascending distance."""
    i, j, d = pairs
    a_all, b_all = np.searchsorted(ids, i), np.searchsorted(ids, j)
    parent = list(range(len(ids)))
    members = {x: [x] for x in parent}
    refused: set[tuple[int, int]] = set()  # roots that failed: their clusters only grow, so they stay refused
    for a, b in zip(*(column[np.argsort(d, kind="stable")].tolist() for column in (a_all, b_all))):
        ra, rb = sorted((_root(parent, a), _root(parent, b)), key=lambda r: -len(members[r]))
        if ra == rb or (ra, rb) in refused or (rb, ra) in refused:
            continue
        if linkage == "complete" and max_distance(vectors[members[ra]], vectors[members[rb]]) > margin:
            refused.add((ra, rb))
            continue
        parent[rb] = ra
        members[ra].extend(members.pop(rb))
    return _components(ids, parent)


def choose_keep(rows: Sequence[Row], policy: str) -> Row:
    """The file a group keeps: largest / smallest (pixels, then bytes), newest / oldest (mtime), first (path).

    Remaining ties go to the first path.
    """
    _check_choice(policy, list(KEEP_ORDER), "keep policy")
    return min(rows, key=KEEP_ORDER[policy])


def _describe(rows: list[Row], vectors: np.ndarray, margin: float, keep: str) -> Group:
    """One group: the kept file, the others by distance to it with their status, the largest inner distance."""
    kept = min(rows, key=KEEP_ORDER[keep])
    k = rows.index(kept)
    distances = np.linalg.norm(vectors.astype(np.float64) - vectors[k], axis=1)
    members = [Member(row, float(dist), _status(float(dist), margin))
               for n, (row, dist) in enumerate(zip(rows, distances)) if n != k]
    members.sort(key=lambda m: (m.distance, m.path))
    return Group(kept, max_distance(vectors, vectors), members)


def _hidden_pairs(pairs: Pairs, margin: float, groups: list[Group], rows: dict[int, Row]) -> list[CrossPair]:
    """Pairs within margin the groups do not show: not both the kept file or duplicates of one group."""
    shown: dict[int, int] = {}  # id → group number, for kept files and their duplicates
    for n, g in enumerate(groups):
        shown[g.keep.id] = n
        shown.update((m.row.id, n) for m in g.members if m.status == "duplicate")
    hidden = [CrossPair(rows[a].path, rows[b].path, float(d), "duplicate")
              for a, b, d in zip(*(column.tolist() for column in pairs))
              if d <= margin and (shown.get(a, -1) != shown.get(b, -2))]
    return sorted(hidden, key=lambda p: (p.distance, p.path, p.other_path))


# ---- the two searches ----------------------------------------------------------------------------


def find_duplicates(store: Store, margin: float, review_margin: float | None = None, linkage: str = "complete",
                    keep: str = "largest", *, block: int = BLOCK) -> DedupResult:
    """Groups of duplicate images in one index, each with the file to keep; groups ordered by that file.

    Groups are formed at the review margin (the wider net; margin when None). A member is a duplicate
    when its distance to the kept file is within margin, else it is for review.

    Raises:
        DedupError: margins not 0 < margin <= review_margin. ValueError: unknown linkage or keep policy.
    """
    review = _margins(margin, review_margin)
    _check_choice(linkage, LINKAGES, "linkage")
    _check_choice(keep, list(KEEP_ORDER), "keep policy")
    pairs, ids, vectors = _pairs_and_vectors(store, review, block)
    rows = dict(zip(ids.tolist(), store.rows(ids)))
    groups = []
    for members in _link(pairs, ids, vectors, review, linkage):
        at = np.searchsorted(ids, members)
        groups.append(_describe([rows[x] for x in members.tolist()], vectors[at], margin, keep))
    groups.sort(key=lambda g: g.keep.path)
    return DedupResult(store.root, margin, review, store.approximate, groups, len(pairs[0]),
                       _hidden_pairs(pairs, margin, groups, rows))


def find_duplicates_in(store: Store, other: Store, margin: float, review_margin: float | None = None, *,
                       block: int = BLOCK) -> CrossResult:
    """Images of store with a duplicate in other, by path then distance: e.g. test images leaked into training.

    Raises:
        ModelMismatchError: the indexes were built by different models. DedupError: bad margins.
    """
    review = _margins(margin, review_margin)
    i, j, d = find_cross_pairs(store, other, review, block=block)
    mine, theirs = store.rows(i), other.rows(j)
    pairs = [CrossPair(a.path, b.path, float(dist), _status(float(dist), margin))
             for a, b, dist in zip(mine, theirs, d.tolist())]
    pairs.sort(key=lambda p: (p.path, p.distance, p.other_path))
    return CrossResult(margin, review, other.approximate, pairs)
