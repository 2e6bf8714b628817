"""``headstart finetune``: full fine-tuning fallback."""

from __future__ import annotations

import click

from ._common import CliState


@click.command("finetune")
@click.argument("source")
@click.pass_context
def finetune(ctx: click.Context, source: str) -> None:
    """Fine-tune backbone + head end to end on SOURCE, then export back onto the ONNX path."""
    from ..errors import HeadstartError

    CliState.from_ctx(ctx).engine()
    raise HeadstartError("`headstart finetune` is not built yet", hint="see issue #6")
