"""``headstart plugin new head|reader|backbone NAME``: start a plugin package that passes its own tests."""

from __future__ import annotations

import click

from ..scaffold import KINDS


@click.group("plugin")
def plugin() -> None:
    """Write plugins: `headstart plugin new KIND NAME` (see `headstart plugins` for what is installed)."""


@plugin.command("new")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("name")
@click.option("-o", "--out", metavar="DIR", default=None,
              help="Folder to create (default: ./headstart-NAME); must not exist or be empty.")
def new(kind: str, name: str, out: str | None) -> None:
    """Write a pip-installable KIND plugin package called NAME: pyproject with the entry point, a working
    example importing only headstart.sdk, tests using the conformance kits, and a README."""
    from ..scaffold import new_plugin

    root = new_plugin(kind, name, out)
    click.echo(f"wrote {kind} plugin '{name}' in {root}/")
    click.echo(f"next: pip install -e '{root}[test]' && (cd {root} && python -m pytest)")
