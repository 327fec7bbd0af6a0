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
from .crowds import CROWD, own_margins
from .linkage import check_linkage, group, max_distance
from .overlap import Checked, check_pairs
from ..core.errors import UsageError
from ..index.rows import Row
from ..index.store import Store

Status = Literal["duplicate", "review", "identical"]  # identical: the same bytes (content hash and size)
MAX_DISTANCE = 2.0  # Euclidean distance of opposite unit vectors
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
    crowded: int = 0  # members within the margin held for review because they do not stand out of a crowd (crowds)
    partial: int = 0  # pairs within the margin set apart: their pictures overlap only in part (overlap)
    unverified: int = 0  # pairs within the margin for review: too few of their features match to show a copy (overlap)
    unchecked: int | None = None  # identical-only: rows of an older index with no content hash; None otherwise

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: margins, approximate, groups of {keep, max_distance, members}, links."""
        return ({"margin": self.margin, "review_margin": self.review_margin, "approximate": self.approximate,
                "groups": [{"keep": g.keep.path, "max_distance": round(g.max_distance, 6),
                            "members": [{"path": m.path, "distance": round(m.distance, 6), "status": m.status}
                                        for m in g.members]} for g in self.groups],
                "links": [{"path": p.path, "other_path": p.other_path, "distance": round(p.distance, 6)}
                          for p in self.links], "capped": self.capped, "crowded": self.crowded,
                "partial": self.partial, "unverified": self.unverified}
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


def _describe(rows: list[Row], vectors: np.ndarray, margin: float, keep: str, own: dict[int, float],
              held: set[frozenset[int]], prefer: frozenset[str] = frozenset()) -> Group:
    """One group: the kept file, the others by distance to it with their status, the largest inner distance.

    A member with the kept file's bytes is "identical" at distance 0, whatever its vector (an older index embedded
    each copy itself); otherwise a member is for review at any distance when it or the kept file is multi-frame,
    beyond the crowd margin of either (own: crowds.own_margins), and when held (_held_pairs)."""
    kept = min(rows, key=_keep_key(keep, prefer))
    k = rows.index(kept)
    distances = np.linalg.norm(vectors.astype(np.float64) - vectors[k], axis=1)
    members = [Member(row, 0.0, "identical") if _same_bytes(row, kept) else
               Member(row, dist, "review" if multiframe(row) or multiframe(kept) or frozenset((row.id, kept.id)) in held
                      else _status(dist, min(margin, own[row.id], own[kept.id])))
               for n, (row, dist) in enumerate(zip(rows, distances.tolist())) if n != k]
    members.sort(key=lambda m: (m.distance, m.path))
    distinct = np.unique(vectors, axis=0)  # copies of one vector add nothing to the diameter
    return Group(kept, max_distance(distinct, distinct), members)


def _hidden_pairs(pairs: Pairs, margin: float, groups: list[Group], rows: dict[int, Row],
                  own: dict[int, float], held: set[frozenset[int]]) -> list[CrossPair]:
    """Pairs within margin the groups do not show: not both the kept file or duplicates of one group; for review
    when either file is multi-frame, the pair does not stand out of a crowd (own: crowds.own_margins) or its
    pictures do not show a copy's layout (held: _held_pairs)."""
    shown: dict[int, int] = {}  # id → group number, for kept files and their duplicates
    for n, g in enumerate(groups):
        shown[g.keep.id] = n
        shown.update((m.row.id, n) for m in g.members if m.status != "review")
    hidden = [CrossPair(rows[a].path, rows[b].path, float(d), "review" if multiframe(rows[a]) or multiframe(rows[b])
                        or d > min(own[a], own[b]) or frozenset((a, b)) in held else "duplicate")
              for a, b, d in zip(*(column.tolist() for column in pairs))
              if d <= margin and (shown.get(a, -1) != shown.get(b, -2))]
    return sorted(hidden, key=lambda p: (p.distance, p.path, p.other_path))


# ---- the two searches ----------------------------------------------------------------------------


def find_duplicates(store: Store, margin: float, review_margin: float | None = None, linkage: str = "kept",
                    keep: str = "largest", *, block: int = BLOCK, progress: Progress | None = None,
                    device: str | None = None, prefer: frozenset[str] = frozenset(), crowd: int = CROWD,
                    check_overlap: bool = True) -> DedupResult:
    """Groups of duplicate images in one index, each with the file to keep; the biggest groups first (_by_size).

    Groups are formed at the review margin (the wider net; margin when None). A member is a duplicate
    when its distance to the kept file is within margin, else it is for review. progress(done, total)
    follows the search (siamsearch.duplicates.closepairs.close_pairs); device: a torch device ("cuda") to search on.
    prefer: content hashes of files a person marked "keep this": each is kept in its group whatever the policy.
    crowd: distinct neighbours within the review margin that make a crowd, whose members' duplicates must stand
    out of it (siamsearch.duplicates.crowds; 0: off). check_overlap: read the pictures of each pair within the
    margin; those that overlap only in part are kept apart, those too featureless to check are for review
    (siamsearch.duplicates.overlap).

    Raises:
        DedupError: margins not 0 < margin <= review_margin. ValueError: unknown linkage or keep policy.
    """
    review = _margins(margin, review_margin)
    check_linkage(linkage)
    _check_choice(keep, list(KEEP_ORDER), "keep policy")
    found = close_pairs(store, review, block=block, progress=progress, device=device)
    rows, own = _rows_with_copies(store, found), own_margins(found, crowd)
    checked = check_pairs(_candidates(found.pairs, margin, own), lambda x: rows[x].abspath) if check_overlap \
        else Checked()
    held = _held_pairs(checked.partial | checked.unverified, found.copies)
    ranks = _rep_ranks(found, rows, keep, prefer)
    groups = _by_size([_describe([rows[x] for x in ids.tolist()], vectors, margin, keep, own, held, prefer)
                       for ids, vectors in _expanded_groups(found, review, linkage, ranks, checked.partial)])
    crowded = sum(m.status == "review" and m.distance <= margin and not (multiframe(m.row) or multiframe(g.keep))
                  and frozenset((m.row.id, g.keep.id)) not in held
                  for g in groups for m in g.members)  # within the margin, for review: held by a crowd
    return DedupResult(store.root, margin, review, store.approximate, groups, len(found.pairs[0]),
                       _hidden_pairs(found.pairs, margin, groups, rows, own, held), found.capped, crowded=crowded,
                       partial=len(checked.partial), unverified=len(checked.unverified))


def _candidates(pairs: Pairs, margin: float, own: dict[int, float]) -> Pairs:
    """The pairs that could be (kept file, duplicate): within the margin and within both files' crowd margins."""
    i, j, d = pairs
    limit = np.minimum(np.array([own[x] for x in i.tolist()]), np.array([own[x] for x in j.tolist()]))
    keep = d <= np.minimum(margin, limit) if len(d) else np.zeros(0, bool)
    return i[keep], j[keep], d[keep]


def _held_pairs(pairs: set[tuple[int, int]], copies: dict[int, np.ndarray]) -> set[frozenset[int]]:
    """The pairs of row ids held for review: each pair of representatives, and of the exact copies they stand for."""
    stand_for = lambda rep: copies.get(rep, [rep])  # noqa: E731
    return {frozenset((int(a), int(b))) for i, j in pairs for a in stand_for(i) for b in stand_for(j)}


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


def _expanded_groups(found: ClosePairs, margin: float, linkage: str, rank: np.ndarray,
                     apart: set[tuple[int, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of each group: linked representatives (never two kept apart), and lone ones with copies,
    each with its copies."""
    linked = group(found.pairs, found.ids, found.vectors, margin, linkage, rank, apart)
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
