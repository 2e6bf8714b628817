"""``headstart plugins``, ``headstart backbones``, ``headstart heads``: what is installed."""

from __future__ import annotations

import click

from ._common import CliState, echo_json, echo_table, json_option


def _catalog_command(kind: str, describe):
    """Build a listing command for one catalog kind (``--json``, ``--show NAME``)."""

    @json_option
    @click.option("--show", metavar="NAME", help=f"Show one {kind} in full (unknown names suggest the closest).")
    @click.pass_context
    def command(ctx: click.Context, as_json: bool, show: str | None) -> None:
        engine = CliState.from_ctx(ctx).engine()
        catalog = engine.catalog
        entries = [catalog.get(kind, show)] if show else catalog.items(kind)
        data = [{**describe(e.spec, engine), "plugin": e.plugin, "aliases": list(e.aliases)} for e in entries]
        if as_json:
            echo_json(data[0] if show else data)
            return
        if show:
            for key, value in data[0].items():
                click.echo(f"{key}: {value}")
            return
        echo_table(["name", "plugin", "description"], [(d["name"], d["plugin"], d.get("description", "")) for d in data])
        broken = engine.failed_plugins()
        if broken:
            click.echo(f"\n{len(broken)} plugin(s) failed to load; see `headstart plugins`.", err=True)

    return command


def _describe_backbone(spec, engine) -> dict:
    from ..backbones.catalog_info import describe_backbone

    return describe_backbone(spec, engine.settings)


def _describe_plain(spec, engine) -> dict:
    return spec.describe()


backbones = click.command("backbones", help="List the backbones the plugins register, and their cached exports.")(
    _catalog_command("backbone", _describe_backbone)
)
heads = click.command("heads", help="List the heads the plugins register.")(_catalog_command("head", _describe_plain))


@click.command("plugins")
@json_option
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every plugin: distribution, version, hooks, and status (with the stage and message of a failure)."""
    engine = CliState.from_ctx(ctx).engine()
    catalog = engine.catalog  # runs the register_* hooks, so failures inside them show up too
    records = engine.plugin_records()
    if as_json:
        echo_json({"plugins": [r.as_dict() for r in records], "conflicts": catalog.conflicts})
        return
    echo_table(
        ["name", "distribution", "version", "status", "hooks"],
        [(r.name, r.distribution or "-", r.version or "-", r.status, ",".join(r.hooks)) for r in records],
    )
    for r in records:
        if r.status == "failed":
            click.echo(f"\nFAILED {r.label} at stage '{r.stage}': {r.error}")
    for conflict in catalog.conflicts:
        click.echo(f"\nconflict: {conflict}")
