"""``headstart export``: export a backbone to ONNX (cached, parity-checked)."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import CliState, device_option, echo_json, json_option


def _calibration_items(path: str | None) -> list[bytes | str] | None:
    """Raw items from a folder of files (bytes) or a text file (one item per line)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        return [f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")]
    return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


@click.command("export")
@click.argument("backbone")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp32 everywhere, int8 for the CPU provider, fp16 for CUDA.")
@device_option
@click.option("--calibrate", "calibrate", metavar="PATH", default=None,
              help="Your data for static int8 of image/numeric backbones: a folder of files or a text file.")
@click.option("--min-cosine", type=float, default=None, help="Accepted min cosine vs PyTorch (int8 default 0.98).")
@click.option("--force", is_flag=True, help="Export again even if a cached export exists.")
@json_option
@click.pass_context
def export(ctx: click.Context, backbone: str, precision: str, device: str, calibrate: str | None,
           min_cosine: float | None, force: bool, as_json: bool) -> None:
    """Export BACKBONE to ONNX once, check parity against PyTorch, and cache it.

    With --device given, also open an onnxruntime session there and report the providers it really got.
    """
    import time

    from ..backbones.export import export as do_export

    engine = CliState.from_ctx(ctx).engine()
    started = time.perf_counter()
    exported = do_export(backbone, precision, engine=engine, calibration=_calibration_items(calibrate), force=force,
                         min_cosine=min_cosine)
    info = {"name": exported.name, "fingerprint": exported.fingerprint, "precision": exported.precision,
            "path": str(exported.path), "dim": exported.dim, "parity": exported.parity,
            "created": exported.manifest.get("created"), "seconds": round(time.perf_counter() - started, 3)}
    if ctx.get_parameter_source("device") != click.core.ParameterSource.DEFAULT:
        from ..backbones.runtime import Encoder

        enc = Encoder(exported, device=device)
        info.update(device=enc.device, providers=enc.providers)
    if as_json:
        echo_json(info)
        return
    p = exported.parity
    click.echo(f"{info['name']} {info['precision']}  fingerprint {info['fingerprint']}")
    click.echo(f"  path        {info['path']}")
    click.echo(f"  parity      min cosine {p['min_cosine']:.6f}, max abs diff {p['max_abs_diff']:.3g} "
               f"on {p['items']} probe items vs {p.get('reference')}")
    if "providers" in info:
        click.echo(f"  providers   {', '.join(info['providers'])}")
