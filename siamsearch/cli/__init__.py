"""The command line: app (the command, its error handling) and one module per command group."""

from . import duplicates, indexing, training  # noqa: F401  (each registers its commands on app)
from .app import app

__all__ = ["app"]
