"""The ``headstart`` command line: thin commands over the public API.

Kept cheap to import: no torch, onnxruntime, faiss or sklearn at module level
(``headstart --help`` must stay fast). Each command lives in its own module.
"""

from __future__ import annotations

import json
import sys

import click

from ..errors import HeadstartError
from ._common import CliState
from .bundle import bundle
from .cache import cache
from .catalog import backbones, heads, plugins
from .embed import embed
from .export import export
from .finetune import finetune
from .plugin import plugin
from .report import report
from .pretrain import pretrain
from .train import eval_cmd, predict, sweep, train


class _Group(click.Group):
    """Adds plugin commands when the group is first listed or invoked."""

    _plugins_added = False

    def _add_plugin_commands(self, ctx: click.Context) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        try:
            engine = CliState.from_ctx(ctx).engine()
            engine.call_each("register_commands", cli=self, engine=engine)
        except HeadstartError:
            pass  # shown by `headstart plugins`; never blocks built-in commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, name: str):
        command = super().get_command(ctx, name)
        if command is None:
            self._add_plugin_commands(ctx)
            command = super().get_command(ctx, name)
        return command

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            from ..registry import did_you_mean

            guess = did_you_mean(args[0], self.commands) if args else None
            if guess and "No such command" in str(exc):
                raise click.UsageError(f"unknown command '{args[0]}'; did you mean '{guess}'?") from None
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="headstart", prog_name="headstart")
@click.option("--store", "store", metavar="DIR", envvar="HEADSTART_HOME", default=None,
              help="Root of the export cache and feature stores [env: HEADSTART_HOME; default: per-user cache dir].")
@click.option("--strict-plugins", is_flag=True, default=None,
              help="Fail when any plugin fails to load [env: HEADSTART_STRICT_PLUGINS=1].")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, store: str | None, strict_plugins: bool | None, debug: bool) -> None:
    """headstart: embed a dataset once with a frozen backbone, train heads on the cached features in seconds.

    \b
    Typical session:
      headstart embed data/train.csv               # embed into the feature store (cached)
      headstart train data/train.csv --head linear -o model/
      headstart eval model/ data/test.csv
      headstart predict model/ data/new.csv -o predictions.csv
    """
    state = CliState.from_ctx(ctx)  # main() passes one in, so a failure can be reported as --json asked
    state.store, state.strict_plugins, state.debug = store, strict_plugins or None, debug


for _command in (embed, train, sweep, eval_cmd, predict, bundle, report, finetune, pretrain, export, backbones, heads,
                 plugins, plugin, cache):
    cli.add_command(_command)


def _fail(as_json: bool, error: str, message: str, hint: str | None, exit_code: int, extra: dict | None = None) -> int:
    """Report a failure: ``error:``/``hint:`` lines on stderr (for people), and with ``--json`` also one JSON
    object on stdout (for programs; nothing else is printed there after it)."""
    if as_json:
        click.echo(json.dumps({"error": error, "message": message, "hint": hint, "exit_code": exit_code,
                               **(extra or {})}, indent=2, default=str))
    click.secho(f"error: {message}", fg="red", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    return exit_code


def console() -> None:
    """The ``headstart`` program (console script and ``python -m headstart``): :func:`main`, then exit.

    Before the interpreter exits, every object is frozen out of the garbage collector: its last collection
    would walk all of torch's objects for nothing (~0.3 s of a short command's exit, measured with
    ``python -c "import torch"`` against ``import torch, gc; gc.freeze()``). Nothing left then needs
    collecting: files are written and closed by the commands themselves."""
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI, turning every failure into one clear report (``--json``: a JSON object
    ``{"error", "message", "hint", "exit_code"}`` on stdout) and that exit code."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    state = CliState()
    # stdout holds one JSON document: a command that printed its result and then fails (cache verify) adds none
    as_json = lambda: not state.json_printed and (  # noqa: E731
        state.json or "--json" in (args[: args.index("--")] if "--" in args else args))
    try:
        cli.main(args=args, prog_name="headstart", standalone_mode=False, obj=state)
    except HeadstartError as exc:
        if debug:
            raise
        data = exc.as_dict()
        extra = {k: v for k, v in data.items() if k not in ("error", "message", "hint", "exit_code")}
        return _fail(as_json(), data["error"], exc.message, exc.hint, exc.exit_code, extra)
    except click.exceptions.Abort:
        return _fail(as_json(), "Aborted", "aborted", None, 130)
    except click.ClickException as exc:
        if not as_json():
            exc.show()
            return exc.exit_code
        return _fail(True, type(exc).__name__, exc.format_message(), None, exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return _fail(as_json(), "KeyboardInterrupt", "interrupted", None, 130)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
