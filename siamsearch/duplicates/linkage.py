"""Pairs → groups: kept linkage (the default), complete linkage or single linkage, by union-find.

single chains (connected components); complete joins two clusters only when every cross pair is within the
margin; kept is complete, then each file left alone joins the group whose kept file is nearest within the
margin, so every duplicate lies within the margin of the file kept in its place (siamsearch.duplicates.dedup).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ..core.errors import UsageError
from .closepairs import Pairs

LINKAGES = ("kept", "complete", "single")


def check_linkage(linkage: str) -> None:
    """An unknown linkage fails at once, before any search."""
    if linkage not in LINKAGES:
        raise UsageError(f"unknown linkage {linkage!r}; choose one of {', '.join(LINKAGES)}")


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
          rank: np.ndarray | None = None, apart: Collection[tuple[int, int]] = ()) -> list[np.ndarray]:
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
        apart: pairs of ids never to put in one group (siamsearch.duplicates.overlap), whatever the linkage.
    """
    check_linkage(linkage)
    if linkage == "kept" and rank is None:
        raise ValueError("kept linkage needs each id's rank in the keep order")
    return _link(pairs, ids, vectors, margin, linkage, rank, _apart_positions(apart, ids))


def _apart_positions(apart: Collection[tuple[int, int]], ids: np.ndarray) -> dict[int, set[int]]:
    """Each position's positions it must stay apart from, both ways."""
    partners: dict[int, set[int]] = {}
    for a, b in apart:
        pa, pb = (int(x) for x in np.searchsorted(ids, (a, b)))
        partners.setdefault(pa, set()).add(pb)
        partners.setdefault(pb, set()).add(pa)
    return partners


def _kept_apart(one: list[int], other: list[int], partners: dict[int, set[int]]) -> bool:
    """True when a member of one must stay apart from a member of other."""
    return bool(partners) and any(not partners.get(x, set()).isdisjoint(other) for x in one)


def _link(pairs: Pairs, ids: np.ndarray, vectors: np.ndarray, margin: float, linkage: str,
          rank: np.ndarray | None, partners: dict[int, set[int]]) -> list[np.ndarray]:
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
        if _kept_apart(members[ra], members[rb], partners) or (
                linkage != "single" and max_distance(vectors[members[ra]], vectors[members[rb]]) > margin):
            refused.add((ra, rb))
            continue
        parent[rb] = ra
        members[ra].extend(members.pop(rb))
    if linkage == "kept":
        _join_lone(parent, members, a_all, b_all, d, margin, rank, partners)
    return _components(ids, parent)


def _join_lone(parent: list[int], members: dict[int, list[int]], a_all: np.ndarray, b_all: np.ndarray,
               d: np.ndarray, margin: float, rank: np.ndarray, partners: dict[int, set[int]]) -> None:
    """Each position alone after complete linkage joins the cluster whose kept position is nearest within margin
    and ranks before it (so that file stays kept), unless it must stay apart from one of its members; the
    union-find is changed in place."""
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
        if not _kept_apart([x], members[int(cluster_of_kept[k])], partners):
            parent[x] = int(cluster_of_kept[k])
