"""``headstart finetune``: full fine-tuning fallback, exported back onto the ONNX path (calls headstart.engine.train.finetune)."""

from __future__ import annotations

from typing import Any

import click

from ._common import (CliState, backbone_option, device_option, echo_json, format_table, json_option,
                      make_reader_options, progress_option, reader_options)


@click.command("finetune")
@click.argument("source")
@backbone_option
@click.option("--head", default="linear", show_default=True, help="linear or mlp[(hidden=(256,), ...)].")
@click.option("--out", "-o", "out", required=True, metavar="MODEL_DIR", help="Model folder to write.")
@click.option("--objective", default="cross-entropy", type=click.Choice(["cross-entropy", "contrastive"]),
              show_default=True, help="contrastive: few labels (SetFit-style pairs, epochs chosen by k-fold CV).")
@click.option("--unfreeze", default=None, help="all | all-but-stem | last:N (top N backbone blocks train) "
              "[default: all; contrastive: auto = chosen by the labelled set's size and classes, docs/finetune.md].")
@click.option("--epochs", default=None, type=int, help="Most epochs [default: 5, contrastive too].")
@click.option("--lr", default=None, type=float, help="Top backbone block LR [default: 5e-5 text, 1e-4 image; contrastive: 2e-4].")
@click.option("--head-lr", default=None, type=float, help="Head LR [default: 10 x --lr].")
@click.option("--layer-decay", default=0.8, show_default=True, type=float, help="LR factor per block going down.")
@click.option("--batch-size", default=None, type=int, help="[default: 32; contrastive: 16].")
@click.option("--patience", default=2, show_default=True, type=int, help="Epochs without improvement before stopping.")
@click.option("--metric", default="accuracy", type=click.Choice(["accuracy", "macro_f1"]), show_default=True)
@device_option
@click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16", "auto"]),
              help="Training precision [default: fp32; contrastive: auto]. cross-entropy: bf16/fp16 are mixed "
                   "precision on CUDA. contrastive: bf16 autocast on the CPU; auto = bf16 where the CPU has native "
                   "bf16 dot products (AVX512-BF16, AMX), else fp32. The export is fp32 either way.")
@click.option("--init-head", default=None, metavar="MODEL_DIR",
              help="Start from this frozen-feature head [default: fit one on the training split first].")
@click.option("--resume", is_flag=True, help="Continue from MODEL_DIR's checkpoint after an interruption.")
@reader_options
@progress_option
@click.option("--val-fraction", default=0.2, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
@click.pass_context
def finetune(ctx: click.Context, source: str, backbone: str | None, head: str, out: str, objective: str,
             unfreeze: str | None, epochs: int | None, lr: float | None, head_lr: float | None, layer_decay: float,
             batch_size: int | None, patience: int, metric: str,
             device: str, precision: str | None, init_head: str | None, resume: bool, text_column: str | None,
             label_column: str | None, reader: str | None, encoding_errors: str, progress: bool | None,
             val_fraction: float, seed: int, as_json: bool) -> None:
    """Fine-tune backbone + head end to end on SOURCE, then export back onto the ONNX path (MODEL_DIR)."""
    from ..embed.sources import refuse_output_over_inputs
    from ..train.finetune import FinetuneOptions, finetune as finetune_api

    refuse_output_over_inputs(out, [source, init_head])
    engine = CliState.from_ctx(ctx).engine()
    options = FinetuneOptions.for_objective(objective, unfreeze=unfreeze, epochs=epochs, lr=lr, head_lr=head_lr,
                                            layer_decay=layer_decay, batch_size=batch_size, device=device,
                                            precision=precision, patience=patience, metric=metric,
                                            val_fraction=val_fraction, seed=seed)
    log = (lambda message: None) if as_json else (lambda message: click.echo(message, err=True))
    result = finetune_api(source, backbone, head, out=out, options=options, init_head=init_head, resume=resume,
                          engine=engine, progress=progress,
                          reader_options=make_reader_options(text_column, label_column, reader, encoding_errors),
                          log=log)
    summary = result.summary()
    if as_json:
        echo_json(summary)
        return
    click.echo(format_summary(summary))


def _tuned_label(split: str | None) -> str:
    """Where the fine-tuned score comes from: the ONNX export on the validation split, or k-fold held-out items."""
    return "fine-tuned (k-fold held-out)" if split == "cross-validation" else "fine-tuned (ONNX export)"


def format_summary(summary: dict[str, Any]) -> str:
    """Frozen vs fine-tuned on the validation split, the epochs, the export."""
    metric = summary["metric"]
    rows = [["frozen features + head", summary["frozen"]["accuracy"], summary["frozen"]["macro_f1"]],
            [_tuned_label(summary["finetuned"].get("split")), summary["finetuned"]["accuracy"],
             summary["finetuned"]["macro_f1"]]]
    lines = [format_table(["validation", "accuracy", "macro_f1"], [[r[0], f"{r[1]:.4f}", f"{r[2]:.4f}"] for r in rows])]
    resumed = summary["resumed_from"]
    lines.append(f"{metric} {summary['improvement']:+.4f}; best epoch {summary['best_epoch']}, {summary['epochs_run']} "
                 f"epochs run" + (" (stopped early)" if summary["stopped_early"] else "")
                 + (f", resumed after epoch {resumed['epoch']}" if resumed else ""))
    parity = summary["export"]["parity"]
    lines.append(f"backbone {summary['backbone']['name']} exported: fingerprint {summary['export']['fingerprint']}, "
                 f"parity min cosine {parity['min_cosine']:.6f}, max abs diff {parity['max_abs_diff']:.2e}")
    lines.append(f"model written to {summary['model']}")
    return "\n".join(lines)


def _refuse_train_only_options() -> None:
    """``--target`` sweeps the default heads and refits the best: ``--head`` / ``--no-refit`` cannot apply."""
    from ..errors import ConfigError

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    given = [f"--{name.replace('_', '-')}" for name in ("head", "no_refit")
             if name in ctx.params and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given:
        from ..train.api import DEFAULT_SWEEP

        raise ConfigError(f"{' and '.join(given)} cannot be combined with --target: --target sweeps the default "
                          f"heads ({', '.join(DEFAULT_SWEEP)}) and refits the best one on all labelled rows",
                          hint=f"drop {' '.join(given)} to let the sweep choose, or drop --target to train that "
                               "one head")


def escalate_cli(source: str, target: str | None, allow_finetune: bool, *, out: str, as_json: bool,
                 **kwargs: Any) -> None:
    """``headstart train --target METRIC=VALUE [--allow-finetune]``: head sweep first, fine-tuning if needed."""
    from ..errors import ConfigError
    from ..train.finetune import escalate
    from ..train.report import format_sweep

    if target is None:
        raise ConfigError("--allow-finetune needs a target to decide when fine-tuning is worth it",
                          hint="add --target accuracy=0.9 (or macro_f1=...)")
    _refuse_train_only_options()
    log = (lambda message: None) if as_json else (lambda message: click.echo(message, err=True))
    result = escalate(source, target, out=out, allow_finetune=allow_finetune, log=log, **kwargs)
    if as_json:
        echo_json(result.summary())
        return
    sweep_stage = result.stages[0]
    click.echo(f"stage 1: head sweep on cached features (target {result.metric} >= {result.target})")
    click.echo(format_sweep(sweep_stage["heads"], result.metric))
    if len(result.stages) > 1:
        ft = result.stages[1]
        click.echo(f"stage 2: fine-tuning {ft['head']} on {ft['backbone']['name']} ({ft['objective']} objective)")
        click.echo(format_table(["validation", result.metric], [
            ["frozen features + head", f"{ft['frozen_' + result.metric]:.4f}"],
            [_tuned_label(ft["split"]), f"{ft[result.metric]:.4f}"]]))
    click.echo(result.decision)
    click.echo(f"model written to {result.path}")
