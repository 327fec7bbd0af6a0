"""What a person decided about duplicates, kept in the index folder and applied to every later dedup.

decisions.sqlite sits beside the index's own files: `index` re-runs, relocation and `--rebuild` (which makes a new
rows.sqlite) leave it alone. A decision is about file contents (SHA-256), never a path or a vector, so a renamed or
moved file keeps its marks and decisions made with one model still apply after the model changes:
  not-duplicates  a pair of files never shown as duplicates again (a whole group: each of its pairs);
  keep            a file kept in its group whatever --keep says;
  duplicate       a member confirmed as a duplicate, also from the review band (it moves with the others).
A row whose content hash the index does not know (an older index) can be decided nothing about.
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError
from ..index.folder import DECISIONS, now, side_table
from ..index.rows import Row
from .dedup import DedupResult, Group

SCHEMA_VERSION = 1
KINDS = ("not-duplicates", "keep", "duplicate")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
CREATE TABLE IF NOT EXISTS decisions (kind TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL DEFAULT '',
                                      a_path TEXT NOT NULL, b_path TEXT NOT NULL DEFAULT '', created TEXT NOT NULL,
                                      PRIMARY KEY (kind, a, b));
"""


@dataclass(frozen=True)
class Decision:
    """One decision: its kind, the content hash(es) it is about, the paths they had when it was made."""

    kind: str
    a: str
    b: str
    a_path: str
    b_path: str
    created: str

    def to_dict(self) -> dict[str, str]:
        """The JSON shape of `siamsearch decisions --json`."""
        return dataclasses.asdict(self)


class DecisionError(UsageError):
    """A decision that cannot be recorded; the message is one line saying why."""


@contextmanager
def _table(index_dir: Path) -> Iterator[sqlite3.Connection]:
    """decisions.sqlite with its tables made (index.folder.side_table), its schema version checked.

    Raises:
        DecisionError: it was written by a newer siamsearch.
    """
    with side_table(Path(index_dir) / DECISIONS, SCHEMA) as db:
        version = int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise DecisionError(f"{Path(index_dir) / DECISIONS} has schema {version}; this siamsearch reads up to "
                                f"{SCHEMA_VERSION}: upgrade it")
        yield db


def _hashed(rows: Sequence[Row]) -> list[Row]:
    """The rows, each with a known content hash.

    Raises:
        DecisionError: a row of an older index, with none.
    """
    unknown = [r.path for r in rows if r.sha256 is None]
    if unknown:
        raise DecisionError(f"{unknown[0]} was indexed without a content hash (an older index): run `siamsearch "
                            "index --verify` on its folder first")
    return list(rows)


def record(index_dir: Path | str, kind: str, rows: Sequence[Row]) -> int:
    """Record a decision about these files: not-duplicates (two or more: every pair of them), keep or duplicate
    (one or more: each); how many decisions that made or renewed.

    Raises:
        DecisionError: an unknown kind, too few files, or a file with no content hash.
    """
    if kind not in KINDS:
        raise DecisionError(f"unknown decision {kind!r}; choose one of {', '.join(KINDS)}")
    rows = _hashed(rows)
    if kind == "not-duplicates":
        if len({r.sha256 for r in rows}) < 2:
            raise DecisionError("not-duplicates needs two or more files with different contents")
        ordered = sorted(rows, key=lambda r: r.sha256)
        entries = [(kind, x.sha256, y.sha256, x.path, y.path) for x, y in itertools.combinations(ordered, 2)
                   if x.sha256 != y.sha256]
    else:
        entries = [(kind, r.sha256, "", r.path, "") for r in rows]
    with _table(Path(index_dir)) as db:
        db.executemany("INSERT OR REPLACE INTO decisions (kind, a, b, a_path, b_path, created) VALUES (?, ?, ?, ?, ?, ?)",
                       [(*e, now()) for e in entries])
    return len(entries)


def listed(index_dir: Path | str) -> list[Decision]:
    """Every decision, oldest first; none when the index has no decisions file."""
    if not (Path(index_dir) / DECISIONS).is_file():
        return []
    with _table(Path(index_dir)) as db:
        return [Decision(*r) for r in db.execute("SELECT kind, a, b, a_path, b_path, created FROM decisions "
                                                  "ORDER BY created, kind, a_path, b_path")]


def forget(index_dir: Path | str, rows: Sequence[Row] | None = None) -> int:
    """Remove the decisions about these files (every decision when rows is None); how many went."""
    if not (Path(index_dir) / DECISIONS).is_file():
        return 0
    with _table(Path(index_dir)) as db:
        if rows is None:
            return db.execute("DELETE FROM decisions").rowcount
        hashes = [(r.sha256, r.sha256) for r in _hashed(rows)]
        return sum(db.execute("DELETE FROM decisions WHERE a = ? OR b = ?", h).rowcount for h in hashes)


@dataclass(frozen=True)
class Applied:
    """The decisions of an index, ready to apply: what keeps, what is confirmed, which pairs are not duplicates."""

    keep: frozenset[str] = frozenset()
    duplicate: frozenset[str] = frozenset()
    distinct: frozenset[tuple[str, str]] = frozenset()  # (a, b) with a < b

    @classmethod
    def of(cls, decisions: Iterable[Decision]) -> Applied:
        """Sets by kind."""
        found = {kind: set() for kind in KINDS}
        for d in decisions:
            found[d.kind].add((d.a, d.b) if d.kind == "not-duplicates" else d.a)
        return cls(frozenset(found["keep"]), frozenset(found["duplicate"]), frozenset(found["not-duplicates"]))

    @property
    def named(self) -> frozenset[str]:
        """Every content hash some decision names: a group holding none of them is undecided."""
        return frozenset(h for pair in self.distinct for h in pair) | self.keep | self.duplicate

    def apart(self, a: Row, b: Row) -> bool:
        """True when a person said these two files are not duplicates."""
        return a.sha256 is not None and b.sha256 is not None and tuple(sorted((a.sha256, b.sha256))) in self.distinct

    def result(self, result: DedupResult) -> tuple[DedupResult, int]:
        """The dedup result as the decisions make it, and how many places they changed: members not duplicates
        of their kept file dropped (a group left with none goes), confirmed members in review made duplicates,
        links between files apart dropped. A kept file marked keep counts where the policy alone kept another:
        find_duplicates(prefer=...) has already put it first."""
        changed, groups = 0, []
        for group in result.groups:
            members = [m for m in group.members if not self.apart(m.row, group.keep)]
            confirmed = [dataclasses.replace(m, status="duplicate") if m.status == "review" and
                         m.row.sha256 in self.duplicate else m for m in members]
            changed += len(group.members) - len(members) + sum(a is not b for a, b in zip(members, confirmed))
            changed += group.keep.sha256 in self.keep and bool(confirmed)
            if confirmed:
                groups.append(Group(group.keep, group.max_distance, confirmed))
        rows = {m.path: m.row for g in result.groups for m in g.members} | {g.keep.path: g.keep for g in result.groups}
        links = [p for p in result.links if not (p.path in rows and p.other_path in rows
                                                 and self.apart(rows[p.path], rows[p.other_path]))]
        changed += len(result.links) - len(links)
        return dataclasses.replace(result, groups=groups, links=links), changed


def for_index(index_dir: Path | str) -> Applied:
    """The decisions of the index at index_dir, ready to apply (none when it has none)."""
    return Applied.of(listed(index_dir))
