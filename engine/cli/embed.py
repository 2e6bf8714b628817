"""``headstart embed``: embed a source into the feature store."""

from __future__ import annotations

import click

from ._common import CliState, echo_json

SOURCE_HELP = "A folder of images, a CSV/TSV/JSONL/Parquet file, a text file (one item a line) or a .npy array."


def reader_options(fn):
    """The options every command that reads a source accepts."""
    options = [
        click.option("--text-column", default=None, help="Column holding the text (default: text/sentence/content/...)."),
        click.option("--label-column", default=None, help="Column holding the label (default: label/class/target/...)."),
        click.option("--reader", default=None, help="Force a reader by name instead of choosing by path."),
        click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True,
                     help="Non-UTF-8 bytes: fail that item (strict) or replace them and count (replace)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_reader_options(text_column, label_column, encoding_errors):
    from ..embed.items import ReaderOptions

    return ReaderOptions(text_column=text_column, label_column=label_column, encoding_errors=encoding_errors)


def runtime_options(fn):
    """Backbone and runtime options shared by embed/train/sweep/eval/predict."""
    options = [
        click.option("--backbone", "-b", default=None,
                     help="Backbone name or ref (hf:..., onnx:...); default: minilm-l6 for text, efficientnet-lite0 for images."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
                     help="int8: CPU; image int8 is calibrated on 128 items of the source unless "
                          "`headstart export --calibrate` made one. fp16: CUDA."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Items per encoder batch (default on CPU: 16 text, 4 images, 256 arrays; "
                          "on CUDA: 512, 256, 4096)."),
        click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="Image preprocessing processes (default: CPU count; 0 = in-process); with --engine ray, Ray actors."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("embed")
@click.argument("source")
@runtime_options
@reader_options
@click.option("--engine", "engine_name", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run on this machine, or on a Ray cluster (needs `pip install headstart[ray]`).")
@click.option("--address", default=None, help="Ray cluster address (with --engine ray; default: start a local one).")
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True, help="GPUs per Ray worker (--engine ray).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Items read, embedded and committed as one store shard (default: 4096 texts, 256 images).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any item failed (after committing the rest).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def embed(ctx: click.Context, source: str, backbone, precision, device, batch_size, workers, threads, text_column,
          label_column, reader, encoding_errors, engine_name, address, gpus_per_worker, chunk_size, strict, progress,
          as_json) -> None:
    """Embed SOURCE into the feature store of the backbone (cached items are skipped).

    SOURCE is a folder of images (class sub-folders become labels), a CSV/TSV/JSONL/Parquet file,
    a text file (one item a line) or a .npy array. Bad items get an error record and the job goes on.
    """
    engine = CliState.from_ctx(ctx).engine()
    options = make_reader_options(text_column, label_column, encoding_errors)
    common = dict(backbone=backbone, engine=engine, reader=reader, reader_options=options, precision=precision,
                  device=device, batch_size=batch_size, workers=workers, strict=strict,
                  chunk_size=chunk_size)
    if engine_name == "ray":
        from ..distributed.ray_embed import embed_on_ray

        if threads is not None:  # each actor reserves that many CPUs and runs that many onnxruntime threads
            common["cpus_per_worker"] = float(threads)
        result = embed_on_ray(source, address=address, gpus_per_worker=gpus_per_worker, progress=progress, **common)
    else:
        from ..embed.pipeline import embed as run_embed

        result = run_embed(source, threads=threads, progress=progress, **common)
    summary = result.summary()
    if as_json:
        echo_json(summary)
        return
    s = result.stats
    click.echo(f"embedded {s.embedded}, cached {s.cached}, failed {s.failed}, duplicates {s.duplicates}"
               f" of {s.rows} rows with {result.backbone} ({result.precision}) in {s.seconds['total']:.2f}s"
               f" ({s.items_per_second:.0f} items/s)")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in s.seconds.items() if k != "total" and v)
    if stages:
        click.echo(f"stages: {stages}")
    if s.truncated:
        click.echo(f"{s.truncated} text(s) were truncated at the backbone's maximum length")
    click.echo(f"store: {result.store_path}")
    for record in result.errors[:10]:
        click.echo(f"  failed {record.ref}: {record.reason}", err=True)
    if len(result.errors) > 10:
        click.echo(f"  ... and {len(result.errors) - 10} more (`headstart cache info --errors`)", err=True)
