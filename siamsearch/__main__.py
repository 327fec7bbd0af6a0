"""python -m siamsearch → the command line."""

from .cli import app

app()
