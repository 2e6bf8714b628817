"""``headstart export``: export a backbone to ONNX (cached, parity-checked)."""

from __future__ import annotations

import click

from ._common import CliState


@click.command("export")
@click.argument("backbone")
@click.pass_context
def export(ctx: click.Context, backbone: str) -> None:
    """Export BACKBONE to ONNX once, check parity against PyTorch, and cache it."""
    from ..errors import HeadstartError

    CliState.from_ctx(ctx).engine()
    raise HeadstartError("`headstart export` is not built yet", hint="see issue #3")
