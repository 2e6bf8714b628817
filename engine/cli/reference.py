"""Generate docs/cli.md, the command-line reference, from the click commands themselves.

    python -m headstart.engine.cli.reference            # print the page
    python -m headstart.engine.cli.reference docs/cli.md # write it
    python -m headstart.engine.cli.reference --check docs/cli.md   # exit 1 if the file differs

Every built-in command and sub-command gets its ``--help`` text, formatted at a fixed width so the
page does not depend on the terminal. Plugin commands are left out (they depend on what is installed).
tests/test_docs.py checks that the committed page equals this output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import click

WIDTH = 100
HEADER = """# Command-line reference

Generated from the commands' `--help` by `python -m headstart.engine.cli.reference docs/cli.md`; do not edit
by hand (tests/test_docs.py checks it equals the generated text). The concepts behind each command are in the
other pages of docs/; commands added by plugins are listed by `headstart --help` where they are installed.
"""


def _walk(command: click.Command, parent: click.Context | None, name: str) -> Iterator[click.Context]:
    """Contexts of ``command`` and of every built-in sub-command below it, in sorted order."""
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=name, parent=parent, **settings)
    yield ctx
    if isinstance(command, click.Group):
        for sub in sorted(command.commands):  # the registered commands only: no plugin loading
            yield from _walk(command.commands[sub], ctx, sub)


def commands() -> list[click.Context]:
    """A context for ``headstart`` and for each of its built-in (sub-)commands."""
    from . import cli

    return list(_walk(cli, None, "headstart"))


def render() -> str:
    """The whole reference page as markdown."""
    parts = [HEADER]
    for ctx in commands():
        parts.append(f"\n## `{ctx.command_path}`\n\n```\n{ctx.command.get_help(ctx).rstrip()}\n```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    text = render()
    if not paths:
        sys.stdout.write(text)
        return 0
    path = Path(paths[0])
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"error: {path} differs from the commands' --help\n"
                  f"hint: run `python -m headstart.engine.cli.reference {path}` and commit it", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
