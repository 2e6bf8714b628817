"""``headstart train|sweep|eval|predict``: heads on cached features."""

from __future__ import annotations

import click

from ._common import CliState


def _pending(ctx: click.Context, name: str) -> None:
    from ..errors import HeadstartError

    CliState.from_ctx(ctx).engine()
    raise HeadstartError(f"`headstart {name}` is not built yet", hint="see issue #5")


@click.command("train")
@click.argument("source")
@click.pass_context
def train(ctx: click.Context, source: str) -> None:
    """Train a head on SOURCE's cached features and write a model folder."""
    _pending(ctx, "train")


@click.command("sweep")
@click.argument("source")
@click.pass_context
def sweep(ctx: click.Context, source: str) -> None:
    """Train several heads on the same cached features and compare them in one table."""
    _pending(ctx, "sweep")


@click.command("eval")
@click.argument("model_dir")
@click.argument("source")
@click.pass_context
def eval_cmd(ctx: click.Context, model_dir: str, source: str) -> None:
    """Evaluate the model in MODEL_DIR on labelled SOURCE."""
    _pending(ctx, "eval")


@click.command("predict")
@click.argument("model_dir")
@click.argument("source")
@click.pass_context
def predict(ctx: click.Context, model_dir: str, source: str) -> None:
    """Predict labels for SOURCE with the model in MODEL_DIR."""
    _pending(ctx, "predict")
