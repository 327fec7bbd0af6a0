"""The SQLite table of an index's rows: each image's stable id, path, identity, file stamp, size and hash.

Only siamsearch.index.store writes it, and commits only when the vectors agree (see store.py): this module
knows SQL, not FAISS. A table opens inside a read transaction, so a reader sees the rows of one commit
however long it stays open, while a writer commits beside it (WAL mode).

The sha256 column came after format 1's first tables: an older table opens without it (every hash
unknown) and gets it when a writer opens it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

COLUMNS = "id, path, identity, size, mtime_ns, width, height, sha256, frames"
ADDED = {"sha256": "TEXT", "frames": "INTEGER"}  # columns an older table lacks: NULL (unknown) until upgraded
PLACEHOLDERS = ", ".join("?" * len(COLUMNS.split(", ")))
SCHEMA = """
CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, identity TEXT,
                     size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, width INTEGER NOT NULL,
                     height INTEGER NOT NULL, sha256 TEXT, frames INTEGER);
PRAGMA journal_mode = WAL;
"""
QUERY_CHUNK = 500  # ids per SELECT ... IN (...): under SQLite's variable limit


@dataclass(frozen=True)
class Row:
    """One indexed image: its stable id, where it is, and the file stamp it was embedded from."""

    id: int
    path: str  # relative to the index root, posix
    abspath: Path
    identity: str | None
    size: int
    mtime_ns: int
    width: int
    height: int
    sha256: str | None = None  # hex digest of the content it was embedded from; None = unknown (an older index)
    frames: int | None = None  # frames or pages the file holds (a multi-page TIFF, an animated GIF); None = unknown


@dataclass(frozen=True)
class NewRow:
    """What Store.add needs to make a row: where the image is, its identity and file stamp, its size."""

    path: str  # relative to the index root, posix; not yet in the index
    identity: str | None
    size: int
    mtime_ns: int
    width: int
    height: int
    sha256: str | None = None
    frames: int | None = None


class RowTable:
    """rows.sqlite: read rows by id, insert and delete them; the caller commits.

    Raises (on open):
        sqlite3.DatabaseError: the file is not a readable rows table.
    """

    def __init__(self, path: Path, root: Path) -> None:
        """Open the table and hold one snapshot of it until the first commit or rollback."""
        self.root = root
        self._db = sqlite3.connect(path)
        try:
            self._db.execute("BEGIN")
            self._ids = np.fromiter((r[0] for r in self._db.execute("SELECT id FROM images")), np.int64)
            self._columns = {r[1] for r in self._db.execute("PRAGMA table_info(images)")}
        except sqlite3.DatabaseError:
            self._db.close()
            raise

    def upgrade(self) -> None:
        """Add the columns an older table lacks (unknown values), committed; only the writer calls this."""
        missing = [c for c in ADDED if c not in self._columns]
        for column in missing:
            self._db.execute(f"ALTER TABLE images ADD COLUMN {column} {ADDED[column]}")
        if missing:
            self._db.commit()
            self._columns.update(missing)

    def _select(self) -> str:
        """COLUMNS as this table can give them: an older table's unknown hashes and frame counts read as NULL."""
        return ", ".join(c if c in self._columns else "NULL" for c in COLUMNS.split(", "))

    @staticmethod
    def create(path: Path) -> None:
        """An empty table at path."""
        db = sqlite3.connect(path)
        db.executescript(SCHEMA)
        db.close()

    def ids_at_open(self) -> np.ndarray:
        """(N,) int64 ids the table held when opened: what loading checks the vectors against."""
        return self._ids

    def next_id(self) -> int:
        """The first id never used (AUTOINCREMENT: ids of removed rows are not reused)."""
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sqlite_sequence WHERE name = 'images'"
                                ).fetchone()[0]

    def insert(self, ids: Sequence[int], rows: Sequence[NewRow]) -> None:
        """Add rows under those ids, uncommitted."""
        values = [(int(i), *astuple(row)) for i, row in zip(ids, rows, strict=True)]
        self._db.executemany(f"INSERT INTO images ({COLUMNS}) VALUES ({PLACEHOLDERS})", values)

    def delete(self, ids: Sequence[int] | np.ndarray) -> None:
        """Drop the rows of those ids, uncommitted."""
        self._db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in ids])

    def commit(self) -> None:
        """Make the inserts and deletes so far durable: the index's commit record."""
        self._db.commit()

    def rollback(self) -> None:
        """Forget the uncommitted inserts and deletes."""
        self._db.rollback()

    def _row(self, r: tuple) -> Row:
        """A Row from a SELECT of COLUMNS."""
        return Row(r[0], r[1], self.root / r[1], *r[2:])

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Row]:
        """The rows of those ids, in the same order.

        Raises:
            KeyError: an id (e.g. -1 padding) has no row.
        """
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        found: dict[int, Row] = {}
        for i in range(0, len(wanted), QUERY_CHUNK):
            part = wanted[i:i + QUERY_CHUNK]
            sql = f"SELECT {self._select()} FROM images WHERE id IN ({', '.join('?' * len(part))})"
            found.update((r[0], self._row(r)) for r in self._db.execute(sql, part))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"no rows with ids {missing[:5]}")
        return [found[i] for i in wanted]

    def __iter__(self) -> Iterator[Row]:
        """Every row, by id."""
        for r in self._db.execute(f"SELECT {self._select()} FROM images ORDER BY id"):
            yield self._row(r)

    def identities(self) -> int:
        """How many distinct identities the rows have, counted by SQLite rather than by reading every row."""
        return self._db.execute("SELECT COUNT(DISTINCT identity) FROM images").fetchone()[0]

    def close(self) -> None:
        """Close the connection."""
        self._db.close()
