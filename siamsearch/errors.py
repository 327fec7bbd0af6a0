"""The one base of every error a user can cause: the CLI catches it once and prints its one line."""

from __future__ import annotations


class SiamsearchError(Exception):
    """Something siamsearch cannot do as asked; the message is one line saying what to do."""


class UsageError(SiamsearchError, ValueError):
    """An argument, setting or input that cannot be used as given."""


class NotFoundError(SiamsearchError, FileNotFoundError):
    """A folder or file the user named does not exist."""
