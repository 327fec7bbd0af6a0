"""python -m siamsearch → the command line."""

from .cli.app import app

app()
