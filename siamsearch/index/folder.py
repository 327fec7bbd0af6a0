"""The files of an index folder: their names, the manifest, atomic replacement, the write lock, a full disk.

siamsearch.index.store keeps the folder's three files in agreement; this module says how each is written.
"""

from __future__ import annotations

import errno
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss

from ..core.atomic import LockedError, exclusive_lock, write_atomic
from ..core.errors import (CorruptIndexError, NotAnIndexError, StoreError, StoreLockedError, StoreWriteError,
                     UnsupportedFormatError)
from .rows import RowTable

FORMAT_VERSION = 1
MANIFEST, INDEX, ROWS, LOCK = "manifest.json", "index.faiss", "rows.sqlite", ".lock"
DECISIONS = "decisions.sqlite"  # what a person decided about duplicates (siamsearch.duplicates.decisions): kept by --rebuild
MANIFEST_KEYS = {"root": str, "fingerprint": str, "dim": int, "requested_kind": str, "search": dict}


def write_index(folder: Path, index: faiss.Index) -> None:
    """Replace index.faiss atomically."""
    write_atomic(folder / INDEX, lambda tmp: faiss.write_index(index, tmp))


def _reason(exc: BaseException) -> str:
    """The last line of an error's message (its type's name when it has none): what a one-line message quotes."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


@contextmanager
def disk_writes(folder: Path) -> Iterator[None]:
    """A full disk or a failed write ends in one line: the commit order leaves what is on disk consistent."""
    try:
        yield
    except (sqlite3.OperationalError, RuntimeError, OSError) as exc:
        raise StoreWriteError(f"cannot write the index {folder} ({_reason(exc)}); what is on disk is consistent: "
                              "free some space and run again") from None


def disk_full(exc: BaseException) -> bool:
    """True for SQLite's SQLITE_FULL and the OS's ENOSPC or EDQUOT: the disk has no room, the index may be intact."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def no_room(folder: Path, exc: BaseException) -> StoreWriteError:
    """The one line for a full disk met opening an index: not --rebuild, which would only embed everything again."""
    return StoreWriteError(f"the disk holding the index {folder} is full ({_reason(exc)}); free some space and "
                           "run again")


def open_rows(folder: Path, root: Path) -> RowTable:
    """The index's rows table, or one line saying why not: a full disk, or a missing or damaged rows.sqlite."""
    if not (folder / ROWS).is_file():
        raise CorruptIndexError(f"{folder / ROWS} is missing; rebuild the index with --rebuild")
    try:
        return RowTable(folder / ROWS, root)
    except sqlite3.DatabaseError as exc:
        if disk_full(exc):
            raise no_room(folder, exc) from None
        raise CorruptIndexError(f"{folder / ROWS} is unreadable; rebuild the index with --rebuild") from None


UNLOCKABLE = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)  # a file system with no flock: FUSE, some NFS and SMB


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the index's exclusive write lock, or fail at once if another process has it."""
    try:
        with exclusive_lock(folder / LOCK):
            yield
    except LockedError:
        raise StoreLockedError(f"{folder}: another siamsearch process is writing to this index") from None
    except OSError as exc:
        if disk_full(exc):
            raise no_room(folder, exc) from None
        if exc.errno not in UNLOCKABLE:
            raise
        raise StoreError(f"{folder}: its file system cannot lock files ({exc.strerror}); put the index on a local "
                         "disk with --index (an index on NFS or SMB is not safe to share between hosts)") from None


def now() -> str:
    """UTC timestamp for a manifest or a record."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def side_table(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """An SQLite file of the index folder with `schema` (CREATE ... IF NOT EXISTS) applied: what the index keeps
    beside its rows (moves' stand-ins, a person's decisions). Committed when the block ends well, closed always."""
    db = sqlite3.connect(path, timeout=30)
    try:
        db.executescript(schema)
        yield db
        db.commit()
    finally:
        db.close()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, checked for presence and format version."""
    if not (folder / MANIFEST).is_file():
        raise NotAnIndexError(f"{folder} is not a siamsearch index (no {MANIFEST})")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        version = int(manifest["format_version"])
        if not all(isinstance(manifest[key], kind) for key, kind in MANIFEST_KEYS.items()):
            raise TypeError("a field has the wrong type")
    except (ValueError, KeyError, TypeError, OSError):
        raise CorruptIndexError(f"{folder / MANIFEST} is unreadable; rebuild the index with --rebuild") from None
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(f"{folder} has index format {version}, this siamsearch reads up to "
                                     f"{FORMAT_VERSION}; upgrade siamsearch or rebuild the index")
    return manifest
