"""``embed --engine ray``: the workers do the work; the driver plans splits and commits shard entries.

The driver opens the source (schema checked), finds or makes the backbone's export, opens the
store, and asks the reader for *splits* (``source.splits(rows)``: Parquet row-group runs, byte
ranges of CSV/JSONL/text lines, row ranges of ``.npy``, file lists of an image folder; a reader
without splits is read whole by one worker). It keeps at most ``in_flight`` splits per
:class:`~headstart.engine.distributed.worker.SplitWorker` actor queued (``ray.wait``, no wave barrier:
reading, encoding and writing overlap across actors), and commits each returned list of staged shard
files with one manifest commit (:meth:`StoreWriter.commit_shard_entries`) while holding the store's
writer lock for the job. Its state is the list of splits and counters: no payloads, keys or vectors
(unless ``keep_rows``, which returns every row's key like the local engine).

Faults: actors restart and Ray re-runs the method of a killed one (``max_restarts``/``max_task_retries``);
its staged files are never committed (orphans, removed when the next writer opens the store). A killed
driver loses its uncommitted splits; a re-run's workers skip every committed key.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from ..errors import ConfigError, DistributedError, HeadstartError
from ..embed.items import ReaderOptions
from ..embed.job import DEFAULT_CHUNK_SIZE, EmbedResult, error_record, progress_bar, start_job
from ..faultpoints import pause_point

IN_FLIGHT_PER_WORKER = 2  # splits queued per actor: one running, one ready to start (no idle gap)
MAX_ERRORS_KEPT = 100  # error records the driver keeps for the result without keep_rows (all are counted)
SPLIT_CHUNKS = 1  # a split holds about this many chunks (a chunk is one shard)


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
    split_rows: int | None = None,
    keep_rows: bool = True,
    update_index: bool = True,
    strict: bool = False,
    **_: Any,
) -> EmbedResult:
    """Embed ``source`` into the backbone's feature store on a Ray cluster; same store as the local engine.

    ``address``: an existing cluster (``auto``, ``host:port``, ``ray://host:port``); default: the Ray
    already initialised in this process, else a local cluster started (and stopped) here.
    ``workers``: actors (default: one per GPU share with ``gpus_per_worker``, else one per core on a
    local cluster, or all CPU slots but one); each takes ``cpus_per_worker`` CPUs and runs that many
    onnxruntime threads. ``chunk_size`` items make one shard; ``split_rows`` (default ``chunk_size``)
    items one task (readers round to their own units, e.g. Parquet row groups). ``keep_rows=False``
    returns counts and the first error records only (driver memory independent of the item count);
    ``update_index`` brings the FAISS index up to date at the end (else the first search builds it).
    """
    from ..backbones.preprocess import make_preprocessor
    from ..embed.sources import choose_reader
    from ..plugins import get_engine
    from .cluster import connect, default_workers
    from .worker import WorkerTask

    engine = engine or get_engine()
    device = _device(device, gpus_per_worker)
    if cpus_per_worker <= 0 or (workers is not None and workers < 1):
        raise ConfigError(f"Ray workers need at least one actor and a positive CPU share, got workers={workers}, "
                          f"cpus_per_worker={cpus_per_worker}", hint="use --workers 1 or more")
    job = start_job(source, backbone, engine=engine, reader=reader, reader_options=reader_options,
                    precision=precision)
    spec, exported, store, stats = job.spec, job.exported, job.store, job.stats
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE[spec.modality]
    if chunk_size < 1 or (split_rows is not None and split_rows < 1) or (batch_size is not None and batch_size < 1):
        raise ConfigError(f"batch size, chunk size and split rows must be positive, got {batch_size}, {chunk_size} "
                          f"and {split_rows}")
    options = reader_options or ReaderOptions()
    reader_name = choose_reader(os.fspath(source), options, reader=reader, engine=engine).name
    t = time.perf_counter()
    splits = plan_splits(job.source, split_rows or chunk_size * SPLIT_CHUNKS)
    stats.seconds["plan"] = time.perf_counter() - t
    cluster = connect(address)
    bar = progress_bar(progress, job.source.estimate_count(), f"embed [{exported.name} on ray]")
    try:
        n = min(workers or default_workers(cluster, cpus_per_worker, gpus_per_worker), max(1, len(splits)))
        with store.writer(update_index=update_index) as writer:
            task = WorkerTask(store_path=store.path, source=os.fspath(source), reader=reader_name,
                              reader_options=options, exported=exported, preprocessor=make_preprocessor(spec),
                              modality=spec.modality, dim=spec.dim, device=device, threads=max(1, int(cpus_per_worker)),
                              batch_size=batch_size, chunk_size=chunk_size, prefix=f"ray-{secrets.token_hex(3)}",
                              keep_rows=keep_rows, max_errors=MAX_ERRORS_KEPT, writable=not writer.read_only,
                              shipped=_ship(exported) if cluster.nodes > 1 else None,
                              home=os.environ.get("HEADSTART_HOME"))
            results = _dispatch(splits, task, n, cpus_per_worker, gpus_per_worker, writer, stats, bar)
    finally:
        if bar is not None:
            bar.close()
        cluster.close()
    return _finish(job, results, keep_rows, strict)


def plan_splits(source: Any, rows: int) -> list[Any]:
    """The reader's splits of ``source`` (``[None]``, the whole source as one split, when it has none)."""
    splitter = getattr(source, "splits", None)
    if splitter is None:
        return [None]
    return list(splitter(rows))


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


def _ship(exported) -> Any:
    """The export's files in the object store, for nodes that do not share the driver's export cache."""
    import ray

    folder = exported.path.parent
    return ray.put({name: (folder / name).read_bytes() for name in exported.manifest.get("files", {})})


def _dispatch(splits: list[Any], task: Any, n: int, cpus: float, gpus: float, writer: Any, stats: Any,
              bar: Any) -> list[Any]:
    """Run every split on ``n`` actors, at most ``IN_FLIGHT_PER_WORKER`` queued each; commit results as they come.

    Returns the split results (rows and errors dropped from those already folded in when not keep_rows).
    """
    import ray

    from .worker import SplitWorker

    actor = ray.remote(SplitWorker).options(num_cpus=cpus, num_gpus=gpus or None, max_restarts=-1,
                                            max_task_retries=-1)
    actors = [actor.remote(task) for _ in range(n)]
    pending: dict[Any, int] = {}  # object ref -> actor number
    queue = iter(enumerate(splits))
    committed = len(writer.store)
    results: list[Any] = []

    def submit(worker: int) -> None:
        nxt = next(queue, None)
        if nxt is not None:
            pending[actors[worker].run.remote(*nxt)] = worker

    try:
        for _ in range(IN_FLIGHT_PER_WORKER):
            for worker in range(n):
                submit(worker)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            worker = pending.pop(done[0])
            submit(worker)
            result = ray.get(done[0])
            t = time.perf_counter()
            writer.commit_shard_entries(result.entries)
            stats.seconds["commit"] = stats.seconds.get("commit", 0.0) + time.perf_counter() - t  # the driver's
            if result.entries:  # a split whose items were all stored already commits nothing
                committed += sum(int(e["rows"]) for e in result.entries if e["kind"] == "vectors")
                pause_point("store-committed", rows=committed, split=result.index)
            _fold(stats, result)
            result.entries = []
            results.append(result)
            if bar is not None:
                bar.update(result.rows)
    except ray.exceptions.RayError as exc:
        cause = _headstart_cause(exc)
        if cause is not None:
            raise cause from None
        raise DistributedError(f"the Ray job failed after {stats.embedded} item(s) were committed: {exc}",
                               hint="committed shards are kept; fix the cause and re-run to embed the rest") from exc
    finally:
        for a in actors:
            ray.kill(a)
    return results


def _fold(stats: Any, result: Any) -> None:
    """Add one split's counts to the job's stats (worker seconds add up across workers; ``commit`` is the
    driver's own time)."""
    stats.rows += result.rows
    stats.embedded += result.embedded
    stats.cached += result.cached
    stats.duplicates += result.duplicates
    stats.failed += result.failed
    stats.truncated += result.truncated
    stats.skipped += result.skipped
    stats.session_created = stats.session_created or result.session
    for name, seconds in result.seconds.items():
        stats.seconds[name] = stats.seconds.get(name, 0.0) + seconds
    if len(stats.skipped_examples) < 5:
        stats.skipped_examples.extend(result.skipped_examples[:5 - len(stats.skipped_examples)])


def _finish(job: Any, results: list[Any], keep_rows: bool, strict: bool) -> EmbedResult:
    """The result: counts always; every row's key (source order) with ``keep_rows``, else the first errors."""
    stats = job.stats
    source_stats = getattr(job.source, "stats", {}) or {}
    stats.skipped += int(source_stats.get("skipped", 0))  # entries the driver's split planning passed over
    examples = list(getattr(job.source, "skipped_examples", []))
    stats.skipped_examples = (examples + stats.skipped_examples)[:5]
    results.sort(key=lambda r: r.index)
    errors = [error_record(*e) for r in results for e in r.errors]
    if not keep_rows:
        errors = errors[:MAX_ERRORS_KEPT]
    kept: tuple[list, list, list] = ([], [], [])
    for r in results:
        for key, ref, label in r.row_list or ():
            kept[0].append(key)
            kept[1].append(ref)
            kept[2].append(label)
    return job.finish(None, {}, strict, errors=errors, kept=kept)


def _headstart_cause(exc: BaseException) -> HeadstartError | None:
    """The HeadstartError an actor raised (Ray wraps it), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, HeadstartError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None
