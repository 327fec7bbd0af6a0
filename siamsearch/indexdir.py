"""The files of an index folder: their names, the manifest, atomic replacement, the write lock, a full disk.

siamsearch.store keeps the folder's three files in agreement; this module says how each is written.
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

from .atomic import LockedError, exclusive_lock, write_atomic
from .errors import (CorruptIndexError, NotAnIndexError, StoreError, StoreLockedError, StoreWriteError,
                     UnsupportedFormatError)

FORMAT_VERSION = 1
MANIFEST, INDEX, ROWS, LOCK = "manifest.json", "index.faiss", "rows.sqlite", ".lock"
MANIFEST_KEYS = {"root": str, "fingerprint": str, "dim": int, "requested_kind": str, "search": dict}


def write_index(folder: Path, index: faiss.Index) -> None:
    """Replace index.faiss atomically."""
    write_atomic(folder / INDEX, lambda tmp: faiss.write_index(index, tmp))


@contextmanager
def disk_writes(folder: Path) -> Iterator[None]:
    """A full disk or a failed write ends in one line: the commit order leaves what is on disk consistent."""
    try:
        yield
    except (sqlite3.OperationalError, RuntimeError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise StoreWriteError(f"cannot write the index {folder} ({reason}); what is on disk is consistent: "
                              "free some space and run again") from None


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
        if exc.errno not in UNLOCKABLE:
            raise
        raise StoreError(f"{folder}: its file system cannot lock files ({exc.strerror}); put the index on a local "
                         "disk with --index (an index on NFS or SMB is not safe to share between hosts)") from None


def now() -> str:
    """UTC timestamp for the manifest."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
