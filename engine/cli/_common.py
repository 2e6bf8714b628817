"""Shared CLI plumbing: the engine for this invocation, JSON output, tables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import click


@dataclass
class CliState:
    store: str | None = None
    strict_plugins: bool | None = None
    debug: bool = False
    _engine: Any = field(default=None, repr=False)

    @classmethod
    def from_ctx(cls, ctx: click.Context) -> "CliState":
        root = ctx.find_root()
        if not isinstance(root.obj, CliState):
            root.obj = cls()
        return root.obj

    def engine(self):
        """The engine for this invocation (plugins loaded once), also made the process default."""
        if self._engine is None:
            from ..config import Settings
            from ..plugins import Engine, set_engine

            self._engine = Engine(Settings.from_env(home=self.store, strict_plugins=self.strict_plugins))
            set_engine(self._engine)
        return self._engine


pass_state = click.make_pass_decorator(CliState, ensure=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table (no colour, safe in logs and pipes)."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    click.echo(format_table(headers, rows))
