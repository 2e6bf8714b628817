"""``headstart embed``: embed a source into the feature store."""

from __future__ import annotations

import click

from ._common import CliState


@click.command("embed")
@click.argument("source")
@click.option("--backbone", "-b", default=None, help="Backbone name or ref (hf:..., onnx:...); default by modality.")
@click.pass_context
def embed(ctx: click.Context, source: str, backbone: str | None) -> None:
    """Embed SOURCE (folder of images, CSV/TSV/JSONL/Parquet, text file, .npy) into the feature store."""
    from ..errors import HeadstartError

    CliState.from_ctx(ctx).engine()
    raise HeadstartError("`headstart embed` is not built yet", hint="see issue #4")
