"""``headstart report MODEL_DIR [TEST] -o report.html``: one self-contained HTML page about a model."""

from __future__ import annotations

from typing import Any

import click

from ._common import CliState, echo_json, embed_kwargs, embed_runtime_options, json_option, reader_options, trust_option


@click.command("report")
@click.argument("model_dir")
@click.argument("test", required=False)
@click.option("--out", "-o", "out", required=True, metavar="REPORT.html", help="HTML file to write.")
@embed_runtime_options
@reader_options
@trust_option
@json_option
@click.pass_context
def report(ctx: click.Context, model_dir: str, test: str | None, out: str, trust_pickle: bool, as_json: bool,
           **options: Any) -> None:
    """Write one self-contained HTML page (inline SVG, opens offline) about the model in MODEL_DIR: confusion
    heat map, per-class precision/recall, most confused pairs, reliability diagram before/after calibration,
    and the learning curve, head sweep and regularisation path when the model recorded them. With a labelled
    TEST source the figures are measured on it (with example items of each confused pair); without, they are
    the validation figures recorded at training."""
    from pathlib import Path

    from ..embed.sources import refuse_output_over_inputs
    from ..report.build import check_report_name, model_report, write_report
    from ..train.api import load_model

    check_report_name(out)
    engine = CliState.from_ctx(ctx).engine()
    folder = Path(model_dir)
    model_files = [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
    refuse_output_over_inputs(out, [*(p for p in (test,) if p), *model_files], option="--out")
    model = load_model(model_dir, trust=trust_pickle, engine=engine)
    path = write_report(model_report(model, test, engine=engine, **embed_kwargs(**options)), out)
    if as_json:
        echo_json({"report": str(path)})
        return
    click.echo(f"report written to {path}")
