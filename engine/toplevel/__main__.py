"""``python -m headstart``: the command line."""

from headstart.engine.cli import console

console()
