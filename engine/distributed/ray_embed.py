"""``embed --engine ray``: the local pipeline's readers, export and store, with encoding on a Ray actor pool.

The driver reads the source with the same reader plugins, skips every content key already
in the store (so a re-run after a crash embeds only what is missing), and puts the rest in
Ray's object store as Arrow blocks of ``chunk_size`` items, a wave at a time (at most
``WAVE_BLOCKS`` blocks or ``WAVE_BYTES`` of payload, so the object store holds a bounded part of
the source, never all of it). ``map_batches`` runs each wave through an
:class:`~headstart.engine.distributed.worker.EmbedWorker` actor pool (one onnxruntime session per actor);
Ray restarts an actor that dies and retries its block. The driver commits every finished block
as one store shard (vectors + error records, manifest replaced atomically), and brings the
FAISS index up to date once at the end.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError, DistributedError, HeadstartError
from ..embed.items import ReaderOptions
from ..embed.pipeline import (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE_CUDA, DEFAULT_CHUNK_SIZE, EmbedResult, EmbedStats,
                              progress_bar, start_job)

WAVE_BLOCKS = 64  # blocks in Ray's object store at once (a wave), at most ...
WAVE_BYTES = 512 * 2**20  # ... and at most this much payload


def embed_on_ray(
    source: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    progress: bool | None = None,
    backbone: str | Any | None = None,
    engine: Any = None,
    reader: str | None = None,
    reader_options: ReaderOptions | None = None,
    precision: str = "fp32",
    device: str = "auto",
    batch_size: int | None = None,
    chunk_size: int | None = None,
    strict: bool = False,
    **_: Any,
) -> EmbedResult:
    """Embed ``source`` into the backbone's feature store on a Ray cluster; same result as the local engine.

    ``address``: an existing cluster (``auto``, ``host:port``, ``ray://host:port``); default: the Ray
    already initialised in this process, else a local cluster started (and stopped) here.
    ``workers``: actors in the pool (default: one per GPU share with ``gpus_per_worker``, else one
    per core on a local cluster, or all CPU slots but one). Each actor takes ``cpus_per_worker`` CPUs
    and runs that many onnxruntime threads. ``chunk_size`` items form one Ray block and one store shard.
    """
    from ..backbones.preprocess import make_preprocessor
    from ..plugins import get_engine
    from .cluster import connect, default_workers

    engine = engine or get_engine()
    device = _device(device, gpus_per_worker)
    if cpus_per_worker <= 0 or (workers is not None and workers < 1):
        raise ConfigError(f"Ray workers need at least one actor and a positive CPU share, got workers={workers}, "
                          f"cpus_per_worker={cpus_per_worker}", hint="use --workers 1 or more")
    job = start_job(source, backbone, engine=engine, reader=reader, reader_options=reader_options,
                    precision=precision)
    spec, exported, store, stats = job.spec, job.exported, job.store, job.stats
    batch_size = batch_size or (DEFAULT_BATCH_SIZE_CUDA if device == "cuda" else DEFAULT_BATCH_SIZE)[spec.modality]
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE[spec.modality]
    cluster = connect(address)
    plan = _Plan()
    bar = progress_bar(progress, job.source.estimate_count(), f"embed [{exported.name} on ray]")
    try:
        n = workers or default_workers(cluster, cpus_per_worker, gpus_per_worker)
        worker_args = None
        with store.writer() as writer:
            for wave in _waves(job.source, store, chunk_size, stats, plan, bar):
                if plan.errors:
                    writer.add_errors(plan.errors)
                    writer.commit()
                    plan.errors.clear()
                if not wave:
                    continue
                if worker_args is None:
                    worker_args = dict(exported=exported, preprocessor=make_preprocessor(spec), modality=spec.modality,
                                       device=device, threads=max(1, int(cpus_per_worker)), batch_size=batch_size,
                                       shipped=_ship(exported) if cluster.nodes > 1 else None)
                _run(wave, plan, worker_args, n, cpus_per_worker, gpus_per_worker, writer, store.dim, stats, bar)
    finally:
        if bar is not None:
            bar.close()
        cluster.close()
    return job.finish(plan.rows, plan.failed, strict)


def _device(device: str, gpus_per_worker: float) -> str:
    if gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker:g}", hint="use 0 for CPU actors")
    if gpus_per_worker > 0:
        if device == "cpu":
            raise ConfigError("--device cpu with --gpus-per-worker > 0 would hold GPUs without using them",
                              hint="drop --device cpu, or set --gpus-per-worker 0")
        return "cuda"  # Ray sets CUDA_VISIBLE_DEVICES per actor; the encoder verifies it got CUDA
    if device == "cuda":
        raise ConfigError("--device cuda on Ray needs GPUs for the actors",
                          hint="add --gpus-per-worker 1 (or a fraction such as 0.5 to share a GPU)")
    return "cpu" if device == "auto" else device


class _Plan:
    """What the driver read so far: every source row, the failed items, the read errors not yet committed."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str | None]] = []
        self.failed: dict[str, Any] = {}
        self.errors: list[Any] = []


def _waves(src, store, chunk_size: int, stats: EmbedStats, plan: _Plan, bar: Any,
           max_blocks: int | None = None, max_bytes: int | None = None) -> Iterator[list[Any]]:
    """Read the source; skip stored keys and duplicates; yield the rest as waves of object-store blocks.

    A wave is yielded (and must be embedded before reading goes on) once it holds ``max_blocks``
    blocks or ``max_bytes`` of payload; rows, failures and read errors accumulate in ``plan``.
    """
    import pyarrow as pa
    import ray

    from ..store.features import ErrorRecord
    from .worker import payload_array

    max_blocks = max_blocks or WAVE_BLOCKS
    max_bytes = max_bytes or WAVE_BYTES
    seen: set[str] = set()
    pending: list[Any] = []
    wave: list[Any] = []
    wave_bytes = 0

    def flush() -> int:
        present = store.contains([it.key for it in pending])
        todo = []
        for item, have in zip(pending, present):
            if have:
                stats.cached += 1
                plan.failed.update(store.errors_for([item.key]))
            elif item.error is not None:
                record = ErrorRecord(item.key, item.ref, item.error, "read")
                plan.errors.append(record)
                plan.failed[item.key] = record
            else:
                todo.append(item)
        if bar is not None:
            bar.update(len(pending) - len(todo))
        pending.clear()
        if not todo:
            return 0
        table = pa.table({"key": pa.array([it.key for it in todo], type=pa.string()),
                          "ref": pa.array([it.ref for it in todo], type=pa.string()),
                          "payload": payload_array(todo[0].modality, [it.payload for it in todo])})
        wave.append(ray.put(table))
        return table.nbytes

    t = time.perf_counter()
    for item in src:
        plan.rows.append((item.key, item.ref, item.label))
        if item.key in seen:
            stats.duplicates += 1
            if bar is not None:
                bar.update(1)
            continue
        seen.add(item.key)
        pending.append(item)
        if len(pending) >= chunk_size:
            wave_bytes += flush()
            if len(wave) >= max_blocks or wave_bytes >= max_bytes:
                stats.seconds["read"] += time.perf_counter() - t
                yield list(wave)
                wave.clear()
                wave_bytes = 0
                t = time.perf_counter()
    if pending:
        flush()
    stats.seconds["read"] += time.perf_counter() - t
    yield list(wave)


def _ship(exported) -> Any:
    """The export's files in the object store, for nodes that do not share the driver's export cache."""
    import ray

    folder = exported.path.parent
    return ray.put({name: (folder / name).read_bytes() for name in exported.manifest.get("files", {})})


def _run(blocks: list[Any], plan: _Plan, worker_args: dict, n: int, cpus: float, gpus: float, writer, dim: int,
         stats: EmbedStats, bar: Any) -> None:
    """Run one wave of blocks through an actor pool; commit each finished block as one shard."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from .worker import EmbedWorker

    context = DataContext.get_current()
    saved = context.enable_progress_bars, getattr(context, "print_on_execution_start", True)
    context.enable_progress_bars, context.print_on_execution_start = False, False  # our own bar instead
    stats.session_created = True
    t = time.perf_counter()
    write = 0.0
    try:
        dataset = ray.data.from_arrow_refs(blocks).map_batches(
            EmbedWorker, batch_size=None, batch_format="pyarrow", compute=ActorPoolStrategy(size=min(n, len(blocks))),
            fn_constructor_kwargs=worker_args, num_cpus=cpus, num_gpus=gpus or None)
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            w = time.perf_counter()
            _commit_block(table, writer, dim, plan, stats)
            write += time.perf_counter() - w
            if bar is not None:
                bar.update(table.num_rows)
    except ray.exceptions.RayError as exc:
        cause = _headstart_cause(exc)
        if cause is not None:
            raise cause from None
        raise DistributedError(f"the Ray job failed after {stats.embedded} item(s) were committed: {exc}",
                               hint="committed blocks are kept; fix the cause and re-run to embed the rest") from exc
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
    stats.seconds["write"] = stats.seconds.get("write", 0.0) + write
    stats.seconds["encode"] = stats.seconds.get("encode", 0.0) + time.perf_counter() - t - write


def _headstart_cause(exc: BaseException) -> HeadstartError | None:
    """The HeadstartError an actor raised (Ray wraps it), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, HeadstartError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def _commit_block(table, writer, dim: int, plan: _Plan, stats: EmbedStats) -> None:
    from ..store.features import ErrorRecord
    from ..store.shards import vectors_of

    keys = table.column("key").to_pylist()
    refs = table.column("ref").to_pylist()
    errors = table.column("error").to_pylist()
    ok = np.fromiter((e is None for e in errors), dtype=bool, count=len(keys))
    records = [ErrorRecord(keys[i], refs[i], errors[i], table.column("stage")[i].as_py())
               for i in np.nonzero(~ok)[0]]
    if ok.any():
        rows = np.nonzero(ok)[0]
        stats.embedded += writer.add([keys[i] for i in rows], vectors_of(table, dim)[rows], [refs[i] for i in rows])
    if records:
        writer.add_errors(records)
        plan.failed.update((r.key, r) for r in records)
    writer.commit()
    stats.truncated += int(np.asarray(table.column("truncated")).sum())
