"""``headstart bundle``: one verified ONNX file (preprocessing + backbone + head) from a model folder."""

from __future__ import annotations

import click

from ._common import CliState, _events_from_context, echo_json, event_options, json_option, trust_option


@click.command("bundle")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out", required=True, metavar="FILE.onnx", help="Where to write the bundle.")
@click.option("--precision", type=click.Choice(["fp32", "int8", "fp16"]), default=None,
              help="Precision of the bundled backbone [default: the model's]. Another precision than the model's "
                   "is checked on the validation split (at most 0.5 pt accuracy lost).")
@click.option("--check-on", "check_on", metavar="SOURCE", default=None,
              help="Items to run the parity gate on [default: the training source the model records].")
@event_options
@trust_option
@json_option
@click.pass_context
def bundle(ctx: click.Context, model_dir: str, out: str, precision: str | None, check_on: str | None,
           trust_pickle: bool, as_json: bool) -> None:
    """Write MODEL_DIR as one ONNX file that runs on onnxruntime alone.

    Text bundles take raw strings (`text`, tokenised in the graph by onnxruntime-extensions; a tokenizer
    the graph cannot hold is written beside the file as NAME.tokenizer.json and the bundle takes
    `input_ids`/`attention_mask`), image bundles one decoded RGB image (`image`, uint8 [H, W, 3], or
    same-size images stacked on the channel axis), numeric backbones their own inputs (event sequences: `x`
    [batch, steps, values] and `mask`; read the gate's source with the same --group-by ... options); outputs
    `probabilities` and `label`. The file is written only after it predicts as `headstart predict` does on
    training and probe items (docs/deploy.md).
    """
    from ..bundle.build import build_bundle
    from ..embed.items import ReaderOptions

    events = _events_from_context(need_vocabulary=False)
    engine = CliState.from_ctx(ctx).engine()
    report = build_bundle(model_dir, out, precision=precision, check_on=check_on, trust=trust_pickle, engine=engine,
                          reader_options=ReaderOptions(events=events) if events is not None else None)
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(f"bundle written to {report.path} ({report.bytes / 1e6:.1f} MB, {report.modality}, {report.head}, "
               f"{report.precision}) in {report.seconds:.1f} s")
    for name, fig in report.parity.items():
        if isinstance(fig, dict) and "max_abs_diff" in fig:
            click.echo(f"  parity on {fig['items']} {name} items: max abs diff {fig['max_abs_diff']:.3g}, "
                       f"label agreement {fig['label_agreement']:.4f}")
        elif isinstance(fig, dict) and "label_agreement" in fig:
            click.echo(f"  {name} split ({fig['items']} items): label agreement {fig['label_agreement']:.4f}, "
                       f"accuracy {fig['bundle_accuracy']:.4f} vs model {fig['model_accuracy']:.4f}")
    for note in report.notes:
        click.echo(f"  note: {note}")
