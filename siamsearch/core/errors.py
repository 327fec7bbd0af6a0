"""The one base of every error a user can cause: the CLI catches it once and prints its one line.

Exit codes (README, "Exit codes"): 0 done; 1 done, but files were skipped; 2 a usage error (a bad
argument, a missing file or folder, an unreadable model or index: `exit_code` of SiamsearchError);
3 refused to protect the user's data or index (RefusedError); 4 an internal error (a bug).
"""

from __future__ import annotations


class SiamsearchError(Exception):
    """Something siamsearch cannot do as asked; the message is one line saying what to do."""

    exit_code = 2


class RefusedError(SiamsearchError):
    """Refused to protect files or an index: a lock held, another model, an unsafe move or undo."""

    exit_code = 3


class UsageError(SiamsearchError, ValueError):
    """An argument, setting or input that cannot be used as given."""


class NotFoundError(SiamsearchError, FileNotFoundError):
    """A folder or file the user named does not exist."""


# ---- an index folder (siamsearch.index.store) ----------------------------------------------------------


class StoreError(SiamsearchError):
    """An index directory that cannot be used; the message is one line saying what to do."""


class NotAnIndexError(StoreError):
    """The directory holds no siamsearch index."""


class IndexExistsError(StoreError, RefusedError):
    """create() on a directory that already holds an index."""


class UnsupportedFormatError(StoreError):
    """The index was written by a newer siamsearch."""


class CorruptIndexError(StoreError):
    """A file of the index is missing or unreadable."""


class ModelMismatchError(StoreError, RefusedError):
    """The index was built by another encoder."""


class StoreLockedError(StoreError, RefusedError):
    """Another process holds the write lock."""


class PruneRefusedError(StoreError, RefusedError):
    """A run would drop the rows of files that may only be out of sight (an unmounted disk, an unreadable folder)."""


class StoreWriteError(StoreError, OSError):
    """Writing an index failed (a full disk); the commit order left what is on disk consistent."""


class RelocateRefusedError(StoreError, RefusedError):
    """The folder an index is pointed at does not hold the files it indexed (siamsearch.index.relocation)."""
