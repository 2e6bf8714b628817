"""``headstart cache info|verify|gc|search``: inspect and maintain the stores."""

from __future__ import annotations

import click

from ._common import CliState


@click.group("cache")
def cache() -> None:
    """Inspect, verify and clean the export cache and feature stores."""


@cache.command("info")
@click.pass_context
def info(ctx: click.Context) -> None:
    """List each feature store with its backbone, fingerprint, vectors, errors and bytes."""
    from ..errors import HeadstartError

    CliState.from_ctx(ctx).engine()
    raise HeadstartError("`headstart cache info` is not built yet", hint="see issue #4")
