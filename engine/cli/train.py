"""``headstart train|sweep|eval|predict``: heads on cached features (thin wrappers over headstart.engine.train.api)."""

from __future__ import annotations

from typing import Any

import click

from ._common import (CliState, backbone_option, echo_json, embed_kwargs, embed_runtime_options, json_option,
                      precision_option, reader_options, trust_option)


def split_heads(text: str) -> list[str]:
    """Split ``linear,mlp(hidden=(256, 128)),sklearn:SVC(C=2, probability=True)`` on top-level commas."""
    heads, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            heads.append(current.strip())
            current = ""
        else:
            current += ch
    heads.append(current.strip())
    return [h for h in heads if h]


_val_options = [
    click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
                 help="Stratified validation share (classes with one example stay in training)."),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed of the validation split."),
]


def _threshold_rule(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Parse --threshold-for when the command line is read (a bad value fails before any work)."""
    from ..train.metrics import parse_threshold_rule

    return None if value is None else parse_threshold_rule(value)


_threshold_option = click.option(
    "--threshold-for", "threshold_for", default=None, metavar="METRIC=VALUE", callback=_threshold_rule,
    help="Two classes: choose the decision threshold that reaches precision=P, fpr=F or recall=R on validation "
         "(e.g. precision=0.9, fpr=0.01); the model keeps it and predict labels with it.")


_allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True,
    help="Save a head that has no safe form (safetensors/skops) as pickle; loading it then needs --trust-pickle.")


def _source_options(fn):
    """What train and sweep take: backbone and precision, the shared embedding and reader options, the split."""
    for option in reversed([backbone_option, precision_option, embed_runtime_options, reader_options, *_val_options,
                            _threshold_option, _allow_pickle_option, json_option]):
        fn = option(fn)
    return fn


def _say_int8(training: dict[str, Any]) -> None:
    """On stderr (also with --json, whose output carries the record under training.int8_check): int8 vs fp32."""
    if training.get("int8_check"):
        from ..train.int8_check import format_int8_check

        click.echo(format_int8_check(training["int8_check"]), err=True)


@click.command("train")
@click.argument("source")
@click.option("--head", "head", default="linear", show_default=True,
              help="NAME or NAME(key=value, ...), e.g. linear, mlp(hidden=(256,)), sklearn:SVC(C=2.0).")
@click.option("--out", "-o", "out", required=True, metavar="MODEL_DIR", help="Model folder to write.")
@click.option("--no-refit", is_flag=True, help="Keep the head fitted on the training split (default: refit on all).")
@click.option("--target", default=None, metavar="METRIC=VALUE",
              help="e.g. accuracy=0.9: sweep the default heads first and keep the best; see --allow-finetune.")
@click.option("--allow-finetune", is_flag=True,
              help="With --target: fine-tune the backbone when the best head misses the target.")
@_source_options
@click.pass_context
def train(ctx: click.Context, source: str, head: str, out: str, no_refit: bool, target: str | None,
          allow_finetune: bool, backbone: str | None, precision: str, val_fraction: float, seed: int, as_json: bool,
          allow_pickle: bool, threshold_for: Any, **options: Any) -> None:
    """Embed SOURCE (cache hits are free), fit a head, print validation metrics, write MODEL_DIR."""
    from ..train.api import train as train_api
    from ..train.report import format_metrics

    engine = CliState.from_ctx(ctx).engine()
    if target is not None or allow_finetune:
        from ..errors import ConfigError
        from .finetune import escalate_cli

        if threshold_for is not None:
            raise ConfigError("--threshold-for does not combine with --target/--allow-finetune",
                              hint="train with --target first, then `headstart train --head HEAD --threshold-for ...`")

        escalate_cli(source, target, allow_finetune, out=out, backbone=backbone, val_fraction=val_fraction, seed=seed,
                     engine=engine, as_json=as_json, **embed_kwargs(precision=precision, **options))
        return
    result = train_api(source, head, backbone=backbone, out=out, val_fraction=val_fraction, seed=seed,
                       refit=not no_refit, engine=engine, allow_pickle=allow_pickle, threshold_for=threshold_for,
                       **embed_kwargs(precision=precision, **options))
    manifest = result.model.manifest
    _say_int8(manifest["training"])
    if as_json:
        echo_json({"model": str(result.path), "head": manifest["head"]["ref"], "backbone": manifest["backbone"],
                   "training": manifest["training"], "metrics": result.metrics})
        return
    click.echo(f"head {manifest['head']['ref']} on {manifest['backbone'].get('name')} "
               f"({manifest['training']['n_labelled']} labelled items, {manifest['training']['n_errors']} errors)")
    for name in manifest["training"]["train_only_classes"]:
        click.echo(f"note: class {name!r} has one example; it is used for training only", err=True)
    click.echo(format_metrics(result.metrics))
    click.echo(f"model written to {result.path}")


@click.command("sweep")
@click.argument("source")
@click.option("--heads", default="linear,mlp,knn,sklearn:LogisticRegression(max_iter=1000)", show_default=True,
              help="Comma-separated head refs (commas inside parentheses are kept).")
@click.option("--metric", default="accuracy", show_default=True,
              type=click.Choice(["accuracy", "macro_f1", "roc_auc", "average_precision"]),
              help="What picks the best head; roc_auc and average_precision (PR-AUC): two classes, rare events.")
@click.option("--save-best", default=None, metavar="DIR", help="Refit the best head on all rows and save it here.")
@click.option("--curve", is_flag=True,
              help="Also fit each head at 6 training sizes (stratified, repeated): learning curve, trend, advice.")
@click.option("--html", "html_out", default=None, metavar="REPORT.html",
              help="Also write the comparison (and the learning curves) as a self-contained HTML page.")
@_source_options
@click.pass_context
def sweep(ctx: click.Context, source: str, heads: str, metric: str, save_best: str | None, curve: bool,
          html_out: str | None, backbone: str | None, precision: str, val_fraction: float, seed: int, as_json: bool,
          allow_pickle: bool, threshold_for: Any, **options: Any) -> None:
    """Fit several heads on the same cached features and compare them in one table (best marked)."""
    from ..train.api import sweep as sweep_api
    from ..train.report import format_sweep

    engine = CliState.from_ctx(ctx).engine()
    if html_out is not None:
        _check_html_out(html_out, source)
    result = sweep_api(source, split_heads(heads), backbone=backbone, val_fraction=val_fraction, seed=seed,
                       metric=metric, save_best=save_best, engine=engine, allow_pickle=allow_pickle, curve=curve,
                       threshold_for=threshold_for, **embed_kwargs(precision=precision, **options))
    _say_int8(result.training)
    if html_out is not None:
        from ..report.build import sweep_report, write_report

        write_report(sweep_report(result.rows, metric, result.curve, title=f"headstart sweep: {source}"), html_out)
        click.echo(f"report written to {html_out}", err=True)
    if as_json:
        echo_json({"metric": metric, "best": result.best, "heads": result.rows, "training": result.training,
                   "saved": str(result.model.path) if result.model else None,
                   **({"curve": result.curve} if result.curve else {})})
        return
    click.echo(format_sweep(result.rows, metric))
    if result.curve:
        from ..train.curve import format_curve

        click.echo(format_curve(result.curve))
    if result.model is not None:
        click.echo(f"best head {result.best} refitted on all rows and written to {result.model.path}")


def _check_html_out(out: str, *inputs: Any) -> None:
    """Before any work: the report name ends in .html and replaces no input."""
    from ..embed.sources import refuse_output_over_inputs
    from ..report.build import check_report_name

    check_report_name(out)
    refuse_output_over_inputs(out, inputs, option="--html")


@click.command("eval")
@click.argument("model_dir")
@click.argument("source")
@click.option("--html", "html_out", default=None, metavar="REPORT.html",
              help="Also write the evaluation as a self-contained HTML report (see `headstart report`).")
@embed_runtime_options
@reader_options
@trust_option
@json_option
@click.pass_context
def eval_cmd(ctx: click.Context, model_dir: str, source: str, html_out: str | None, trust_pickle: bool,
             as_json: bool, **options: Any) -> None:
    """Evaluate the model in MODEL_DIR on labelled SOURCE (accuracy, macro-F1, confusion matrix; two classes:
    ROC-AUC, PR-AUC, recall at precision/FPR targets and at the model's decision threshold)."""
    from ..train.api import evaluate, load_model
    from ..train.report import format_metrics

    engine = CliState.from_ctx(ctx).engine()
    model = load_model(model_dir, trust=trust_pickle, engine=engine)
    if html_out is not None:
        _check_html_out(html_out, source, *[f for f in model.path.iterdir() if f.is_file()])
    metrics = evaluate(model, source, trust=trust_pickle, engine=engine, **embed_kwargs(**options))
    if html_out is not None:
        from ..report.build import model_report, write_report

        write_report(model_report(model, source, engine=engine, **embed_kwargs(**options)), html_out)
        click.echo(f"report written to {html_out}", err=True)
    if as_json:
        echo_json(metrics)
        return
    click.echo(format_metrics(metrics, confusion=True))


@click.command("predict")
@click.argument("model_dir")
@click.argument("source")
@click.option("--out", "-o", "out", required=True, metavar="OUT", help="OUT.csv, OUT.jsonl or OUT.parquet.")
@click.option("--use-store/--no-store", "use_store", default=None,
              help="Embed through the feature store (items cached for the next run), or in memory without "
                   "touching it. Default: in memory for sources of at most 1000 items (64 MiB), else the store.")
@embed_runtime_options
@reader_options
@trust_option
@json_option
@click.pass_context
def predict(ctx: click.Context, model_dir: str, source: str, out: str, use_store: bool | None, trust_pickle: bool,
            as_json: bool, **options: Any) -> None:
    """Predict labels for SOURCE with the model in MODEL_DIR; write key, ref, label, probabilities.

    Labels in SOURCE are ignored (a blank label column is the normal case for new data).
    """
    from ..train.api import predict as predict_api

    engine = CliState.from_ctx(ctx).engine()
    result = predict_api(model_dir, source, out, trust=trust_pickle, engine=engine, store=use_store,
                         **embed_kwargs(labelled=False, **options))
    if as_json:
        echo_json({"out": out, "predictions": len(result.labels), "errors": len(result.errors),
                   "classes": [str(c) for c in result.classes]})
        return
    click.echo(f"{len(result.labels)} predictions written to {out}" +
               (f" ({len(result.errors)} items could not be read)" if result.errors else ""))
