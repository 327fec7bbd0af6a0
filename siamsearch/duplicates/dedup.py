"""Margin search over stored vectors → groups → which file to keep.

Works on the embeddings a Store already holds: nothing is embedded again. Two images are duplicates
when the Euclidean distance of their embeddings is within the margin (by default the one the model's
calibration gives a collection of this size: siamsearch.core.calibration). A wider review margin adds a
"needs review" band.

Pairs come from FAISS range searches of the stored vectors against their own index, one block of
queries at a time, so memory holds one block and the pairs found, never an N×N matrix. Pairs then
become groups: kept linkage (the default: complete linkage, then a file left in no group joins the group
whose kept file is nearest within the margin, so every duplicate lies within the margin of the file kept
in its place), complete linkage (every member within the margin of every other) or single linkage
(connected components, which chain). Each group keeps one file by a policy and lists the others with
their distance to it. siamsearch.duplicates.moves moves the duplicates out of the way and back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from .closepairs import BLOCK, ClosePairs, Pairs, Progress, close_pairs, find_cross_pairs
from ..core.errors import UsageError
from ..index.rows import Row
from ..index.store import Store

Status = Literal["duplicate", "review", "identical"]  # identical: the same bytes (content hash and size)
MAX_DISTANCE = 2.0  # Euclidean distance of opposite unit vectors
LINKAGES = ("kept", "complete", "single")
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
    capped: int = 0  # images with more than MAX_NEIGHBOURS others within the review margin: nearest kept
    unchecked: int | None = None  # identical-only: rows of an older index with no content hash; None otherwise

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: margins, approximate, groups of {keep, max_distance, members}, links."""
        return ({"margin": self.margin, "review_margin": self.review_margin, "approximate": self.approximate,
                "groups": [{"keep": g.keep.path, "max_distance": round(g.max_distance, 6),
                            "members": [{"path": m.path, "distance": round(m.distance, 6), "status": m.status}
                                        for m in g.members]} for g in self.groups],
                "links": [{"path": p.path, "other_path": p.other_path, "distance": round(p.distance, 6)}
                          for p in self.links], "capped": self.capped}
                | ({} if self.unchecked is None else {"unchecked": self.unchecked}))

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


def _same_bytes(a: Row, b: Row) -> bool:
    """True when both rows record the same content hash and size: the files are byte-identical."""
    return a.sha256 is not None and (a.sha256, a.size) == (b.sha256, b.size)


def multiframe(row: Row) -> bool:
    """True for a file of several frames or pages: it is embedded by its first, so two scans with one cover
    or two animations with one first frame meet at distance 0; it is a duplicate of its own bytes only."""
    return (row.frames or 1) > 1


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


def group(pairs: Pairs, ids: np.ndarray, vectors: np.ndarray, margin: float, linkage: str = "kept",
          rank: np.ndarray | None = None) -> list[np.ndarray]:
    """Turn pairs into groups of ids (each sorted; groups ordered by their first id).

    single: connected components, which chain (A~B and B~C put A and C together however far apart).
    complete: pairs are merged in ascending distance, and two clusters join only when every cross pair
    is within margin (computed from the vectors), so no two members of a group are farther apart.
    kept: complete, then each id in no group joins the group whose kept id (the lowest rank) is nearest
    within margin and ranks before it: a copy far from some other copy (a captioned crop and a grayscale
    copy of one photo) still goes with the file kept in its place, and a tight group of its own never does.

    Args:
        pairs: (i, j, distances) as find_pairs returns them.
        ids, vectors: (M,) sorted int64 ids, covering every id in pairs, and their (M, D) vectors.
        rank: (M,) for kept: each id's place in the keep order (keep_ranks), lowest kept.
    """
    _check_choice(linkage, LINKAGES, "linkage")
    if linkage == "kept" and rank is None:
        raise ValueError("kept linkage needs each id's rank in the keep order")
    return _link(pairs, ids, vectors, margin, linkage, rank)


def _link(pairs: Pairs, ids: np.ndarray, vectors: np.ndarray, margin: float, linkage: str,
          rank: np.ndarray | None) -> list[np.ndarray]:
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
        if linkage != "single" and max_distance(vectors[members[ra]], vectors[members[rb]]) > margin:
            refused.add((ra, rb))
            continue
        parent[rb] = ra
        members[ra].extend(members.pop(rb))
    if linkage == "kept":
        _join_lone(parent, members, a_all, b_all, d, margin, rank)
    return _components(ids, parent)


def _join_lone(parent: list[int], members: dict[int, list[int]], a_all: np.ndarray, b_all: np.ndarray,
               d: np.ndarray, margin: float, rank: np.ndarray) -> None:
    """Each position alone after complete linkage joins the cluster whose kept position is nearest within margin
    and ranks before it (so that file stays kept); the union-find is changed in place."""
    alone = np.zeros(len(parent), bool)
    alone[[root for root, m in members.items() if len(m) == 1]] = True
    cluster_of_kept = np.full(len(parent), -1, np.int64)
    for root, m in members.items():
        if len(m) > 1:
            cluster_of_kept[min(m, key=lambda x: rank[x])] = root
    lone, kept, dist = np.concatenate([a_all, b_all]), np.concatenate([b_all, a_all]), np.concatenate([d, d])
    fits = alone[lone] & (cluster_of_kept[kept] >= 0) & (rank[kept] < rank[lone]) & (dist <= margin)
    lone, kept, dist = lone[fits], kept[fits], dist[fits]
    order = np.lexsort((kept, dist, lone))  # by lone position, then nearest, then the lower kept position
    first = np.unique(lone[order], return_index=True)[1]
    for x, k in zip(lone[order][first].tolist(), kept[order][first].tolist()):
        parent[x] = int(cluster_of_kept[k])


def _keep_key(keep: str, prefer: frozenset[str] = frozenset()) -> Callable[[Row], tuple]:
    """The keep policy's sort key, files a person marked "keep this" (by content hash) first."""
    return lambda r: (r.sha256 not in prefer, *KEEP_ORDER[keep](r))


def keep_ranks(rows: Sequence[Row], keep: str, prefer: frozenset[str] = frozenset()) -> np.ndarray:
    """Each row's place in the keep policy's order (0 is kept first): what kept linkage needs of the rows."""
    _check_choice(keep, list(KEEP_ORDER), "keep policy")
    order = sorted(range(len(rows)), key=lambda n: _keep_key(keep, prefer)(rows[n]))
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(len(rows))
    return rank


def choose_keep(rows: Sequence[Row], policy: str) -> Row:
    """The file a group keeps: largest / smallest (pixels, then bytes), newest / oldest (mtime), first (path).

    Remaining ties go to the first path.
    """
    _check_choice(policy, list(KEEP_ORDER), "keep policy")
    return min(rows, key=KEEP_ORDER[policy])


def _describe(rows: list[Row], vectors: np.ndarray, margin: float, keep: str,
              prefer: frozenset[str] = frozenset()) -> Group:
    """One group: the kept file, the others by distance to it with their status, the largest inner distance.

    A member with the kept file's bytes is "identical" at distance 0, whatever its vector (an older index embedded
    each copy itself); otherwise a member is for review at any distance when it or the kept file is multi-frame."""
    kept = min(rows, key=_keep_key(keep, prefer))
    k = rows.index(kept)
    distances = np.linalg.norm(vectors.astype(np.float64) - vectors[k], axis=1)
    members = [Member(row, 0.0, "identical") if _same_bytes(row, kept) else
               Member(row, dist, "review" if multiframe(row) or multiframe(kept) else _status(dist, margin))
               for n, (row, dist) in enumerate(zip(rows, distances.tolist())) if n != k]
    members.sort(key=lambda m: (m.distance, m.path))
    distinct = np.unique(vectors, axis=0)  # copies of one vector add nothing to the diameter
    return Group(kept, max_distance(distinct, distinct), members)


def _hidden_pairs(pairs: Pairs, margin: float, groups: list[Group], rows: dict[int, Row]) -> list[CrossPair]:
    """Pairs within margin the groups do not show: not both the kept file or duplicates of one group."""
    shown: dict[int, int] = {}  # id → group number, for kept files and their duplicates
    for n, g in enumerate(groups):
        shown[g.keep.id] = n
        shown.update((m.row.id, n) for m in g.members if m.status != "review")
    hidden = [CrossPair(rows[a].path, rows[b].path, float(d),
                        "review" if multiframe(rows[a]) or multiframe(rows[b]) else "duplicate")
              for a, b, d in zip(*(column.tolist() for column in pairs))
              if d <= margin and (shown.get(a, -1) != shown.get(b, -2))]
    return sorted(hidden, key=lambda p: (p.distance, p.path, p.other_path))


# ---- the two searches ----------------------------------------------------------------------------


def find_duplicates(store: Store, margin: float, review_margin: float | None = None, linkage: str = "kept",
                    keep: str = "largest", *, block: int = BLOCK, progress: Progress | None = None,
                    device: str | None = None, prefer: frozenset[str] = frozenset()) -> DedupResult:
    """Groups of duplicate images in one index, each with the file to keep; the biggest groups first (_by_size).

    Groups are formed at the review margin (the wider net; margin when None). A member is a duplicate
    when its distance to the kept file is within margin, else it is for review. progress(done, total)
    follows the search (siamsearch.duplicates.closepairs.close_pairs); device: a torch device ("cuda") to search on.
    prefer: content hashes of files a person marked "keep this": each is kept in its group whatever the policy.

    Raises:
        DedupError: margins not 0 < margin <= review_margin. ValueError: unknown linkage or keep policy.
    """
    review = _margins(margin, review_margin)
    _check_choice(linkage, LINKAGES, "linkage")
    _check_choice(keep, list(KEEP_ORDER), "keep policy")
    found = close_pairs(store, review, block=block, progress=progress, device=device)
    rows = _rows_with_copies(store, found)
    groups = _by_size([_describe([rows[x] for x in ids.tolist()], vectors, margin, keep, prefer) for ids, vectors
                       in _expanded_groups(found, review, linkage, _rep_ranks(found, rows, keep, prefer))])
    return DedupResult(store.root, margin, review, store.approximate, groups, len(found.pairs[0]),
                       _hidden_pairs(found.pairs, margin, groups, rows), found.capped)


def _by_size(groups: list[Group]) -> list[Group]:
    """The one order of groups in the table, CSV, JSON and HTML (so group numbers agree): biggest first, then by
    the kept file's path."""
    return sorted(groups, key=lambda g: (-len(g.members), g.keep.path))


def _rows_with_copies(store: Store, found: ClosePairs) -> dict[int, Row]:
    """The rows of every representative and of every copy it stands for, by id, in one read."""
    ids = np.union1d(found.ids, np.concatenate([np.zeros(0, np.int64), *found.copies.values()]))
    return dict(zip(ids.tolist(), store.rows(ids)))


def _rep_ranks(found: ClosePairs, rows: dict[int, Row], keep: str, prefer: frozenset[str]) -> np.ndarray:
    """Each representative's place in the keep order: that of the first of the copies it stands for."""
    rank = dict(zip(rows, keep_ranks(list(rows.values()), keep, prefer).tolist()))
    return np.array([min(rank[c] for c in found.copies.get(r, [r])) for r in found.ids.tolist()], np.int64)


def _expanded_groups(found: ClosePairs, margin: float, linkage: str,
                     rank: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of each group: linked representatives, and lone ones with copies, each with its copies."""
    linked = _link(found.pairs, found.ids, found.vectors, margin, linkage, rank)
    grouped = set(np.concatenate([np.zeros(0, np.int64), *linked]).tolist())
    lone = [np.array([rep]) for rep in found.copies if rep not in grouped]
    for reps in [*linked, *lone]:
        members = [found.copies.get(int(r), np.array([r])) for r in reps]
        vectors = found.vectors[np.searchsorted(found.ids, reps)]
        yield np.concatenate(members), np.repeat(vectors, [len(m) for m in members], axis=0)


def find_identical(rows: Iterable[Row], root: Path, keep: str = "largest",
                   prefer: frozenset[str] = frozenset()) -> DedupResult:
    """Groups of byte-identical files by the content hash and size each row stores: no model, no vectors.

    Rows of an older index have no hash: they are counted as unchecked, never grouped.
    """
    _check_choice(keep, list(KEEP_ORDER), "keep policy")
    same: dict[tuple[str, int], list[Row]] = defaultdict(list)
    unchecked = 0
    for row in rows:
        if row.sha256 is None:
            unchecked += 1
        else:
            same[(row.sha256, row.size)].append(row)
    groups = _by_size([_identical_group(copies, keep, prefer) for copies in same.values() if len(copies) > 1])
    pairs = sum(len(g.members) * (len(g.members) + 1) // 2 for g in groups)
    return DedupResult(root, 0.0, 0.0, False, groups, pairs, unchecked=unchecked)


def _identical_group(copies: list[Row], keep: str, prefer: frozenset[str]) -> Group:
    """One group of files with the same bytes: the kept one by policy, the others at distance 0 by path."""
    kept = min(copies, key=_keep_key(keep, prefer))
    members = sorted((Member(r, 0.0, "identical") for r in copies if r is not kept), key=lambda m: m.path)
    return Group(kept, 0.0, members)


def find_duplicates_in(store: Store, other: Store, margin: float, review_margin: float | None = None, *,
                       block: int = BLOCK, device: str | None = None) -> CrossResult:
    """Images of store with a duplicate in other, by path then distance: e.g. test images leaked into training.

    Raises:
        ModelMismatchError: the indexes were built by different models. DedupError: bad margins.
    """
    review = _margins(margin, review_margin)
    i, j, d = find_cross_pairs(store, other, review, block=block, device=device)
    mine, theirs = store.rows(i), other.rows(j)
    pairs = [CrossPair(a.path, b.path, float(dist), _status(float(dist), margin))
             for a, b, dist in zip(mine, theirs, d.tolist())]
    pairs.sort(key=lambda p: (p.path, p.distance, p.other_path))
    return CrossResult(margin, review, other.approximate, pairs)
