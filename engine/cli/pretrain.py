"""``headstart pretrain EVENTS --group-by ... -o BACKBONE_DIR``: a sequence encoder pretrained on unlabelled events."""

from __future__ import annotations


import click

from ._common import CliState, echo_json, event_options, json_option


@click.command("pretrain")
@click.argument("source")
@click.option("--out", "-o", "out", required=True, metavar="BACKBONE_DIR",
              help="Folder to write: encoder.onnx (use as onnx:BACKBONE_DIR/encoder.onnx), vocabulary.json, pretrain.json.")
@event_options
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=0),
              help="Most epochs (0: export the randomly initialised encoder).")
@click.option("--patience", default=3, show_default=True, type=click.IntRange(min=1),
              help="Stop after this many epochs without a better validation loss.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Sequences per step.")
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--objective", type=click.Choice(["next-event", "contrastive"]), default="next-event", show_default=True,
              help="next-event: predict each next event (embedding: the surprise profile); contrastive: match two "
                   "stretches of the same account (embedding: the pooled GRU states). See docs/sequences.md.")
@click.option("--hidden", default=32, show_default=True, type=click.IntRange(min=1),
              help="GRU state size.")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Share of the entities held out for the validation loss.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split, the data order and the weights.")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in BACKBONE_DIR from its last epoch.")
@click.option("--name", default=None, metavar="NAME",
              help="Also register the backbone as NAME in the store's home: `-b NAME` then works in embed, train, "
                   "sweep, eval, predict, finetune and bundle (`-b BACKBONE_DIR` works without a name).")
@json_option
@click.pass_context
def pretrain(ctx: click.Context, source: str, out: str, epochs: int, patience: int, batch_size: int, lr: float,
             objective: str, hidden: int, val_fraction: float, seed: int, resume: bool, name: str | None,
             as_json: bool) -> None:
    """Pretrain a sequence encoder on the unlabelled events of SOURCE (next-event prediction, or contrastive
    views) and write a backbone to BACKBONE_DIR: use it as -b BACKBONE_DIR, as -b NAME with --name NAME, or as
    onnx:BACKBONE_DIR/encoder.onnx. Needs --group-by, --order-by and --fields/--categorical; categoricals get a
    vocabulary built from SOURCE (or --vocabulary). Progress and the validation loss go to stderr per epoch."""
    from ..errors import ConfigError
    from ..sequences.backbone import check_name, register
    from ..sequences.pretrain import PretrainOptions, pretrain as pretrain_api
    from ._common import _events_from_context

    events = _events_from_context(need_vocabulary=False)
    if events is None:
        raise ConfigError("pretrain reads events: --group-by is missing",
                          hint="pass --group-by ENTITY --order-by TIME --fields a,b [--categorical c]")
    if events.per != "entity":
        raise ConfigError("pretrain reads one sequence per entity; --per event does not apply",
                          hint="drop --per (the window is each entity's last --window events)")
    state = CliState.from_ctx(ctx)
    if name is not None:
        check_name(name)
        if state.engine().catalog.find("backbone", name) is not None:
            raise ConfigError(f"--name '{name}' is already a registered backbone", hint="choose another name")
    options = PretrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, hidden=hidden,
                              val_fraction=val_fraction, patience=patience, seed=seed, objective=objective)
    log = (lambda message: None) if as_json else (lambda message: click.echo(message, err=True))
    result = pretrain_api(source, events, out, options, resume=resume, engine=state.engine(), log=log)
    backbone = str(result.folder.resolve())
    if name is not None:
        register(state.engine().settings.home, name, result.folder)
        backbone = name
    if as_json:
        echo_json({**result.summary, "backbone": backbone, "onnx": result.backbone})
        return
    click.echo(f"backbone written to {result.folder}; embed, train or fine-tune with -b {backbone} "
               "(its vocabulary comes with it)")
