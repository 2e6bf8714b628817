"""``headstart embed``: embed a source into the feature store."""

from __future__ import annotations

import click

from ..errors import ItemError
from ._common import (CliState, backbone_option, echo_json, embed_runtime_options, json_option, make_reader_options,
                      precision_option, reader_options)

SOURCE_HELP = "A folder of images, a CSV/TSV/JSONL/Parquet file, a text file (one item a line) or a .npy array."


@click.command("embed")
@click.argument("source")
@backbone_option
@precision_option
@embed_runtime_options
@reader_options
@click.option("--engine", "engine_name", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run on this machine, or on a Ray cluster (needs `pip install headstart[ray]`).")
@click.option("--address", default=None, help="Ray cluster address (with --engine ray; default: start a local one).")
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True, help="GPUs per Ray worker (--engine ray).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Items read, embedded and committed as one store shard (default: 4096 texts, 256 images).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any item failed (after committing the rest).")
@json_option
@click.pass_context
def embed(ctx: click.Context, source: str, backbone, precision, device, batch_size, workers, threads, progress,
          text_column, label_column, reader, encoding_errors, engine_name, address, gpus_per_worker, chunk_size,
          strict, as_json) -> None:
    """Embed SOURCE into the feature store of the backbone (cached items are skipped; labels are ignored).

    SOURCE is a folder of images (class sub-folders become labels), a CSV/TSV/JSONL/Parquet file,
    a text file (one item a line) or a .npy array. Bad items get an error record and the job goes on.
    """
    engine = CliState.from_ctx(ctx).engine()
    options = make_reader_options(text_column, label_column, reader, encoding_errors, labelled=False)
    common = dict(backbone=backbone, engine=engine, reader_options=options, precision=precision,
                  device=device, batch_size=batch_size, workers=workers, strict=strict, chunk_size=chunk_size)
    try:
        if engine_name == "ray":
            from ..distributed.cluster import check_reachable
            from ..distributed.ray_embed import embed_on_ray

            if address is not None:
                check_reachable(address)  # fail in seconds, before opening the source or exporting
            if threads is not None:  # each actor reserves that many CPUs and runs that many onnxruntime threads
                common["cpus_per_worker"] = float(threads)

            result = embed_on_ray(source, address=address, gpus_per_worker=gpus_per_worker, progress=progress,
                                  keep_rows=False, **common)  # the summary needs counts, not every row's key
        else:
            from ..embed.pipeline import embed as run_embed

            result = run_embed(source, threads=threads, progress=progress, keep_rows=False,
                               **common)  # the summary needs counts, not every row's key
    except ItemError as exc:  # --strict: the summary still shows (with --json it is part of the error object)
        if getattr(exc, "result", None) is not None and not as_json:
            _echo_summary(exc.result)
        raise
    if as_json:
        echo_json(result.summary())
        return
    _echo_summary(result)


def _echo_summary(result) -> None:
    s = result.stats
    click.echo(f"embedded {s.embedded}, cached {s.cached}, failed {s.failed}, duplicates {s.duplicates}"
               f" of {s.rows} rows with {result.backbone} ({result.precision}) in {s.seconds['total']:.2f}s"
               f" ({s.items_per_second:.0f} items/s)")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in s.seconds.items() if k != "total" and v)
    if stages:
        click.echo(f"stages: {stages}")
    if s.truncated:
        click.echo(f"{s.truncated} text(s) were truncated at the backbone's maximum length")
    if s.skipped:
        click.echo(f"skipped {s.skipped} entr{'y' if s.skipped == 1 else 'ies'} of the source that are not items: "
                   + "; ".join(s.skipped_examples), err=True)
    click.echo(f"store: {result.store_path}")
    for record in result.errors[:10]:
        click.echo(f"  failed {record.ref}: {record.reason}", err=True)
    if s.failed > 10:  # the result keeps the first error records only; stats.failed counts them all
        click.echo(f"  ... and {s.failed - 10} more (`headstart cache info --errors`)", err=True)
