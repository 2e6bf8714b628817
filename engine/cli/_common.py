"""Shared CLI plumbing: the engine for this invocation, JSON output, tables, and every option that more than
one command takes (defined once here, so each command that reads a source, picks a device or a backbone
accepts the same options with the same help)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import click


@dataclass
class CliState:
    store: str | None = None
    strict_plugins: bool | None = None
    debug: bool = False
    json: bool = False  # set by --json: failures are printed as a JSON object on stdout
    json_printed: bool = False  # the command already printed its JSON document (a failure adds no second one)
    _engine: Any = field(default=None, repr=False)

    @classmethod
    def from_ctx(cls, ctx: click.Context) -> "CliState":
        root = ctx.find_root()
        if not isinstance(root.obj, CliState):
            root.obj = cls()
        return root.obj

    def engine(self):
        """The engine for this invocation (plugins loaded once), also made the process default."""
        if self._engine is None:
            from ..config import Settings
            from ..plugins import Engine, set_engine

            self._engine = Engine(Settings.from_env(home=self.store, strict_plugins=self.strict_plugins))
            set_engine(self._engine)
        return self._engine


pass_state = click.make_pass_decorator(CliState, ensure=True)


def echo_json(data: Any) -> None:
    """Print ``data`` as the command's one JSON document on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        CliState.from_ctx(ctx).json_printed = True


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table (no colour, safe in logs and pipes)."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    click.echo(format_table(headers, rows))


# -- options shared by several commands (one definition each) -----------------------------------------

def _apply(options: list[Callable]) -> Callable:
    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        CliState.from_ctx(ctx).json = True
    return value


#: ``--json``: the result as JSON on stdout, and a failure as ``{"error", "message", "hint", "exit_code"}``.
json_option = click.option("--json", "as_json", is_flag=True, is_eager=True, callback=_remember_json,
                           help="Print the result as JSON; a failure prints {error, message, hint, exit_code}.")

#: ``--device``: where the backbone (or fine-tuning) runs.
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where the backbone runs (auto: CUDA when available).")

backbone_option = click.option(
    "--backbone", "-b", default=None,
    help="Backbone name or ref (hf:..., onnx:...); default: minilm-l6 for text, efficientnet-lite0 for images.")

precision_option = click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
    help="int8: CPU; image int8 is calibrated on 128 items of the source unless `headstart export --calibrate` "
         "made one. fp16: CUDA.")

trust_option = click.option("--trust-pickle", is_flag=True,
                            help="Allow a pickled head (runs code from the model folder).")

progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress bar with items/s and ETA on stderr (default: when stderr is a terminal).")

def _event_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Keep an event option's value for :func:`make_reader_options` (so no command signature has to list them)."""
    if value is not None:
        ctx.meta.setdefault("headstart.events", {})[param.name] = value


def _events_from_context(need_vocabulary: bool = True) -> Any:
    """The :class:`EventOptions` of this command line's event options (None without --group-by)."""
    from ..sequences.options import event_options

    ctx = click.get_current_context(silent=True)
    given = dict(ctx.meta.get("headstart.events", {})) if ctx is not None else {}
    return event_options(**given, need_vocabulary=need_vocabulary)


def _window(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        from ..sequences.options import parse_window

        parse_window(value)  # a window <= 0 fails now
    _event_option(ctx, param, value)


#: Reading an event table as sequences (CSV/JSONL/Parquet): see docs/sequences.md.
event_options = _apply([
    click.option("--group-by", "group_by", default=None, metavar="COLUMN", expose_value=False, callback=_event_option,
                 help="Read the table as events: one sequence per value of COLUMN (e.g. account_id); the rows of "
                      "an entity must be together in the file."),
    click.option("--order-by", "order_by", default=None, metavar="COLUMN", expose_value=False,
                 callback=_event_option, help="With --group-by: the column that orders an entity's events (a timestamp)."),
    click.option("--fields", "fields", default=None, metavar="A,B", expose_value=False, callback=_event_option,
                 help="With --group-by: numeric columns of each event."),
    click.option("--categorical", "categorical", default=None, metavar="C,D", expose_value=False,
                 callback=_event_option, help="With --group-by: categorical columns, mapped to ids by --vocabulary."),
    click.option("--vocabulary", "vocabulary", default=None, metavar="FILE", expose_value=False,
                 callback=_event_option, help="With --categorical: the vocabulary.json of the backbone."),
    click.option("--window", "window", default=None, metavar="N|SPAN", expose_value=False, callback=_window,
                 help="With --group-by: the last N events (default 64), or a time span like 30d, 12h, 90m."),
    click.option("--per", "per", default=None, type=click.Choice(["entity", "event"]), expose_value=False,
                 callback=_event_option,
                 help="With --group-by: one item per entity (its last window; default) or per event (with its history)."),
])

#: The reader options: every command that reads a source takes exactly these.
reader_options = _apply([
    click.option("--text-column", default=None,
                 help="Column holding the input (csv/jsonl/parquet; default: text/sentence/content/..., else the "
                      "only column that is not the label)."),
    click.option("--label-column", default=None,
                 help="Column holding the label (default: label/class/target/...); embed and predict ignore labels, "
                      "but a named label column is never taken for the input."),
    click.option("--reader", default=None, metavar="NAME",
                 help="Force a reader by name (see docs/readers.md) instead of choosing by path."),
    click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True,
                 help="Non-UTF-8 bytes: fail that item (strict) or replace them and count (replace)."),
    event_options,
])

#: How the backbone embeds: device, batch size, workers, threads, progress (embed, train, sweep, eval, predict).
embed_runtime_options = _apply([
    device_option,
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Items per encoder batch (default on CPU: 16 text, 4 images, 256 arrays; on CUDA: 512, 256, 4096)."),
    click.option("--workers", type=click.IntRange(min=0), default=None,
                 help="Image preprocessing processes (default: CPU count; 0 = in-process); `embed --engine ray`: Ray actors."),
    click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads."),
    progress_option,
])


def make_reader_options(text_column: str | None, label_column: str | None, reader: str | None,
                        encoding_errors: str, labelled: bool | None = None):
    """The :class:`ReaderOptions` of the shared reader options (``labelled=False``: labels are ignored)."""
    from ..embed.items import ReaderOptions

    return ReaderOptions(text_column=text_column, label_column=label_column, reader=reader,
                         encoding_errors=encoding_errors, labelled=labelled,
                         events=_events_from_context(need_vocabulary=False))  # or the backbone's


def embed_kwargs(*, text_column: str | None, label_column: str | None, reader: str | None, encoding_errors: str,
                 device: str, batch_size: int | None, workers: int | None, threads: int | None,
                 progress: bool | None, labelled: bool | None = None, **extra: Any) -> dict[str, Any]:
    """The keyword arguments the training API passes on to ``embed`` from the shared options."""
    return {"reader_options": make_reader_options(text_column, label_column, reader, encoding_errors, labelled),
            "device": device, "batch_size": batch_size, "workers": workers, "threads": threads,
            "progress": progress, **extra}
