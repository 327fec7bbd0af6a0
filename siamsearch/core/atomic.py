"""Files that are whole or absent: atomic replacement, and one writer at a time.

Model files, index files, manifests and move manifests all go through write_atomic, so a crash or a
full disk never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout


def write_atomic(path: Path | str, write: Callable[[str], None]) -> None:
    """Call write(temp path) beside path, fsync, rename over path, fsync the folder: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path | str) -> None:
    """fsync a folder: the names created or removed in it are on disk, not only in the page cache."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path | str, data: Any) -> None:
    """Replace a JSON file atomically, indented for people who open it."""
    text = json.dumps(data, indent=2)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class LockedError(OSError):
    """Another process holds the lock."""


@contextmanager
def exclusive_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive OS lock on path (created if missing, kept), or raise LockedError at once; on Windows too.

    The lock is the kernel's (flock, LockFileEx), so a crashed holder releases it; no stale marker file.
    """
    lock = FileLock(path, timeout=0, preserve_lock_file=True)  # preserved: no soft fallback, no unlink race
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(f"{path} is locked by another process") from None
    try:
        yield
    finally:
        lock.release()
