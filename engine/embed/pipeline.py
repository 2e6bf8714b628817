"""The local engine: reader → store lookup → parallel preprocessing → batches → onnxruntime → store.

Cache hits never touch the backbone: the onnxruntime session is created only when
the first item that is not in the store arrives, so a re-run over an embedded
dataset creates none. Bad items never drop their batch: each gets an error record
(content key, source ref, reason, stage) in the store and the job goes on. Work is
committed shard by shard (in a background thread, while the next chunk encodes), so a killed job
loses at most the chunks in flight (about three) and a re-run embeds only what is missing. Job setup (shared with the Ray engine) is in
:mod:`headstart.engine.embed.job`; the encode step (shared too) in :mod:`headstart.engine.embed.encode`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, HeadstartError
from .items import ItemBatch, ReaderOptions, item_batches
from .job import (CALIBRATION_SAMPLE, CALIBRATION_WINDOW, DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE_CUDA,  # noqa: F401
                  DEFAULT_CHUNK_SIZE, MAX_ERRORS_KEPT, MAX_TOKENS_PER_BATCH, EmbedResult, EmbedStats, Job, Rows,
                  calibration_sample, error_record, progress_bar, start_job)
from .seen import InFlight, MetRows

IMAGE_SLICE = 32  # images per worker task: small, so encoding starts as soon as the first slice is decoded


# -- the work units passed from the producer thread to the encoder loop --------------------------------


@dataclass
class _Chunk:
    rows: tuple[Sequence[str], Sequence[str], Sequence[str | None]]  # keys, refs and labels of every source row
    todo_keys: list[str]
    todo_refs: list[str]
    prepared: Any  # list of prepared items, or a list of futures each giving (prepared, errors) for a slice
    errors: list[Any]  # ErrorRecord of items that failed before encoding
    cached_keys: list[str]
    ticket: int  # in InFlight until committed



class _LazyEncoder:
    """The onnxruntime session, created when the first item that is not in the store arrives.

    ``start()`` begins creating it in a background thread (while the first images decode);
    ``run()`` waits for it.
    """

    def __init__(self, job: Job, device: str, threads: int | None, spin: bool = True) -> None:
        self.job, self._device, self._threads, self._spin = job, device, threads, spin
        self._encoder = None
        self._starting: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self) -> None:
        if self._encoder is None and self._starting is None:
            self._starting = threading.Thread(target=self._create, name="headstart-session", daemon=True)
            self._starting.start()

    def _create(self) -> None:
        from ..backbones.runtime import Encoder

        try:
            self._encoder = Encoder(self.job.exported, device=self._device, threads=self._threads, spin=self._spin)
            self.job.stats.session_created = True
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the caller's thread
            self._failure = exc

    @property
    def device(self) -> str:
        """``cuda`` or ``cpu``: the device the session got (waits for it)."""
        return self._session().device

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._session().run(inputs)

    def _session(self):
        if self._encoder is None:
            if self._starting is None:
                self._create()
            else:
                self._starting.join()
            if self._failure is not None:
                failure, self._failure, self._starting = self._failure, None, None
                raise failure
        return self._encoder



def _prepare_slice(preprocessor, payloads: list[Any]) -> list[Any]:
    """Worker-process entry point: preprocess one slice (results are prepared items or ItemErrors)."""
    return preprocessor.prepare_many(payloads)


def embed(
    source: str | os.PathLike[str],
    backbone: str | Any | None = None,
    *,
    engine: Any = None,
    reader: str | None = None,
    reader_options: ReaderOptions | None = None,
    precision: str = "fp32",
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    strict: bool = False,
    calibration: Sequence[Any] | None = None,
    keep_rows: bool = True,
) -> EmbedResult:
    """Embed every item of ``source`` into the feature store of ``backbone`` and return the rows.

    ``backbone`` defaults to the default backbone of the source's modality (``minilm-l6`` for
    text, ``efficientnet-lite0`` for images). ``workers`` is the number of preprocessing
    processes for images (default: the CPU count; 0 preprocesses in this process).
    ``strict=True`` raises :class:`ItemError` after the job if any item failed (everything
    that succeeded is still committed). ``progress=None`` shows a bar when stderr is a terminal.
    ``keep_rows=False`` keeps no per-row state: the result has the counts and the first
    :data:`MAX_ERRORS_KEPT` error records, no keys (what ``headstart embed`` needs).
    """
    from ..backbones.preprocess import make_preprocessor
    from ..plugins import get_engine

    engine = engine or get_engine()  # its settings say where the export cache and stores live
    job = start_job(source, backbone, engine=engine, reader=reader, reader_options=reader_options,
                    precision=precision, calibration=calibration)
    spec, stats = job.spec, job.stats
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE[spec.modality]
    if (batch_size is not None and batch_size < 1) or chunk_size < 1:
        raise ConfigError(f"batch size and chunk size must be positive, got {batch_size} and {chunk_size}")
    preprocessor = make_preprocessor(spec)
    pool = _LazyPool(spec.modality, workers)
    encoder = _LazyEncoder(job, device, threads, spin=pool.size == 0)  # idle threads sleep: int8 +12-36%, fp32 +2-6% images/s
    bar = progress_bar(progress, job.source.estimate_count(), f"embed [{spec.name}]")
    rows = Rows(keep=keep_rows, max_errors=None if keep_rows else MAX_ERRORS_KEPT)
    failed: dict[str, Any] = {}  # key -> error record, of failed keys only
    inflight = InFlight()
    try:
        with job.store.writer(update_index=False) as writer:  # the index is built on first search
            committer = _Committer()

            def commit(chunk: _Chunk, vectors: Any, keys: list[str], refs: list[str], errors: list[Any]) -> None:
                t = time.perf_counter()
                if keys:
                    writer.add(keys, vectors, refs)
                if chunk.errors or errors:
                    writer.add_errors([*chunk.errors, *errors])
                writer.commit()  # one shard per chunk: a killed job loses at most the chunks in flight
                inflight.done(chunk.ticket)
                stats.seconds["write"] += time.perf_counter() - t
                rows.add(job, *chunk.rows, failed)  # every key of the chunk has its outcome now

            try:
                for chunk in _produce(job.source, job.store, inflight, preprocessor, pool, chunk_size, stats):
                    for record in chunk.errors:
                        failed[record.key] = record
                    if chunk.cached_keys:
                        failed.update(job.store.errors_for(chunk.cached_keys))
                    writer.require_writable(len(chunk.todo_keys) + len(chunk.errors))  # read-only store: fail now
                    if chunk.todo_keys:
                        encoder.start()  # the session loads while the first slices decode
                    done = bar.n if bar is not None else 0
                    if bar is not None:  # cached, duplicate and unreadable rows are done already
                        bar.update(len(chunk.rows[0]) - len(chunk.todo_keys))
                    vectors, keys, refs, errors = _encode_chunk(chunk, preprocessor, encoder, spec, batch_size,
                                                                stats, advance=bar.update if bar is not None else None)
                    for record in errors:
                        failed[record.key] = record
                    if bar is not None:  # the rest of the chunk (items that failed before encoding)
                        bar.update(done + len(chunk.rows[0]) - bar.n)
                    committer.submit(lambda c=chunk, v=vectors, k=keys, r=refs, e=errors: commit(c, v, k, r, e))
                committer.finish()
            finally:
                committer.stop()
    finally:
        if bar is not None:
            bar.close()
        pool.shutdown()
    return rows.finish(job, strict)


class _Committer:
    """Commits encoded chunks in order in a background thread while the next chunk encodes (a commit is mostly
    hashing, writing and fsync, which release the GIL); at most one chunk waits for its commit."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="headstart-embed-commit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            if self._failure is None:  # after a failure nothing more is committed
                try:
                    work()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the job's thread
                    self._failure = exc

    def submit(self, work: Any) -> None:
        self._raise()
        self._queue.put(work)

    def finish(self) -> None:
        """Wait for every submitted commit; re-raise the first failure."""
        self.stop()
        self._raise()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure


class _LazyPool:
    """Worker processes for image decoding (CPU-bound Pillow work), started when the first item that is
    not in the store needs them (a fully cached re-run starts none); text and arrays stay in-process."""

    def __init__(self, modality: str, workers: int | None) -> None:
        self.size = 0 if modality != "image" else ((os.cpu_count() or 1) if workers is None else workers)
        self._pool = None

    def get(self):
        if self.size <= 0:
            return None
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: never fork a process that may already hold onnxruntime threads. Start every worker
            # now (they import numpy and Pillow) so the first slices do not wait for each other's start.
            self._pool = ProcessPoolExecutor(max_workers=self.size, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_warm_worker)
            for _ in range(self.size):
                self._pool.submit(int)
        return self._pool

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _warm_worker() -> None:
    import numpy  # noqa: F401
    from PIL import Image  # noqa: F401


def _produce(src, store, inflight: InFlight, preprocessor, pool, chunk_size: int,
             stats: EmbedStats) -> Iterator[_Chunk]:
    """Read, deduplicate, look up and preprocess chunks in a background thread (bounded queue)."""
    out: queue.Queue = queue.Queue(maxsize=2)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            met = MetRows()
            batches = item_batches(src, chunk_size)
            while not stop.is_set():
                t = time.perf_counter()
                batch = next(batches, None)
                stats.seconds["read"] += time.perf_counter() - t
                if batch is None:
                    break
                if len(batch):
                    out.put(_plan_chunk(batch, store, met, inflight, preprocessor, pool, stats))
            out.put(done)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            out.put(exc)

    thread = threading.Thread(target=work, name="headstart-embed-producer", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _plan_chunk(batch: ItemBatch, store, met: MetRows, inflight: InFlight, preprocessor, pool,
                stats: EmbedStats) -> _Chunk:
    """Sort a chunk's rows into cache hits, duplicates (of an earlier row of this job), unreadable rows and
    work (see :mod:`.seen` for how duplicates are told apart without a set of every key).

    Rows the store holds are sorted with array operations (a warm re-run does no per-row Python work here);
    only rows it lacks go through a loop, exactly (a set of the chunk's keys and the chunks in flight).
    """
    keys = batch.keys
    pending = inflight.snapshot()  # before the look-up: a chunk committed meanwhile is in one or the other
    while True:  # rows of one key-index epoch (a look-up that hits a damaged shard drops it: rows renumbered)
        manifest = store.manifest
        vector_rows, error_rows = store.locate(keys)
        if store.manifest.get("key_index") == manifest.get("key_index"):
            break
    met.follow(manifest)  # the first chunk: before any commit of this job, so its rows are those held before
    present = (vector_rows >= 0) | (error_rows >= 0)
    first = met.meet(vector_rows, error_rows)
    held = np.flatnonzero(present)
    cached_at = held[first[held]]
    cached = [keys[i] for i in cached_at.tolist()]
    stats.cached += len(cached)
    stats.duplicates += len(held) - len(cached)
    errors, todo = [], []
    here: set[str] = set()
    refs = batch.refs
    for i in np.flatnonzero(~present).tolist():
        key = keys[i]
        if key in here or any(key in keys_ for keys_ in pending):  # met in this chunk, or planned earlier
            stats.duplicates += 1  # and not committed yet
            continue
        here.add(key)
        reason = batch.errors.get(i)
        if reason is not None:
            errors.append(error_record(key, refs[i], reason, "read"))
        else:
            todo.append(i)
    todo_keys = [keys[i] for i in todo]
    ticket = inflight.add([*todo_keys, *(record.key for record in errors)])
    payloads = [batch.payloads[i] for i in todo]
    t = time.perf_counter()
    if payloads and pool.get() is not None:
        step = max(1, min(IMAGE_SLICE, -(-len(payloads) // (2 * (os.cpu_count() or 1)))))
        prepared: Any = [pool.get().submit(_prepare_slice, preprocessor, payloads[i:i + step])
                         for i in range(0, len(payloads), step)]
    else:
        prepared = preprocessor.prepare_many(payloads) if payloads else []
    stats.seconds["preprocess"] += time.perf_counter() - t
    return _Chunk(rows=(keys, refs, batch.labels), todo_keys=todo_keys, todo_refs=[refs[i] for i in todo],
                  prepared=prepared, errors=errors, cached_keys=cached, ticket=ticket)


def _prepared_slices(chunk: _Chunk, stats: EmbedStats) -> Iterator[tuple[int, list[Any]]]:
    """(offset, prepared items) per slice: worker-pool slices as each completes, else the whole chunk."""
    prepared = chunk.prepared
    if not (prepared and hasattr(prepared[0], "result")):
        yield 0, prepared
        return
    from concurrent.futures.process import BrokenProcessPool

    offset = 0
    for future in prepared:  # futures from the worker pool, in submission order
        t = time.perf_counter()
        try:
            part = future.result()
        except BrokenProcessPool:
            raise HeadstartError(
                "an image preprocessing worker process died (killed, out of memory, or it could not start)",
                hint="worker processes are spawned: call embed() from a script under "
                     "`if __name__ == \"__main__\":`, or pass workers=0 (--workers 0) to decode in-process") from None
        stats.seconds["preprocess"] += time.perf_counter() - t
        yield offset, part
        offset += len(part)



def _encode_chunk(chunk: _Chunk, preprocessor, encoder: _LazyEncoder, spec: Any, batch_size: int | None,
                  stats: EmbedStats, advance: Any = None):
    """Run the shared encode step over a chunk's prepared items, each worker slice as soon as it is ready;
    ``advance(n)`` is called after each encoded batch (the progress bar moves per batch, not per chunk).

    Returns (vectors, keys, refs, error records) for the chunk.
    """
    from .encode import batch_settings, encode_prepared

    device = "cpu"
    if chunk.todo_keys and (batch_size is None or spec.modality == "text"):
        device = encoder.device  # the defaults differ by device
    size, max_tokens = batch_settings(spec.modality, device, batch_size)
    out = encode_prepared(_prepared_slices(chunk, stats), chunk.todo_keys, chunk.todo_refs, preprocessor,
                          encoder.run, spec.dim, size, max_tokens, advance)
    stats.seconds["encode"] += out.seconds
    stats.truncated += out.truncated
    stats.embedded += len(out.keys)
    return out.vectors, out.keys, out.refs, out.errors
