"""The embedding job: reader → store lookup → parallel preprocessing → batches → onnxruntime → store.

Cache hits never touch the backbone: the onnxruntime session is created only when
the first item that is not in the store arrives, so a re-run over an embedded
dataset creates none. Bad items never drop their batch: each gets an error record
(content key, source ref, reason, stage) in the store and the job goes on. Work is
committed shard by shard, so a killed job loses at most the shard in flight and a
re-run embeds only what is missing.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, HeadstartError, ItemError
from .items import Item, ReaderOptions

# text 16: int8 ran 5-8% faster than at 32 (fp32 within noise; 16..256 measured) and dynamic int8, which
# scales each batch by its own range, couples fewer texts. images 4: batches of 2-4 were fastest beside the
# decode workers (1,000 JPEGs, 2 cores: int8 263 images/s vs 229 at 32, fp32 197 vs 167) and peak RSS fell
# from ~850 to ~550 MB.
DEFAULT_BATCH_SIZE = {"text": 16, "image": 4, "numeric": 256}
# on CUDA the host work per batch is what limits, so batches are large (not measured here: no GPU)
DEFAULT_BATCH_SIZE_CUDA = {"text": 512, "image": 256, "numeric": 4096}
DEFAULT_CHUNK_SIZE = {"text": 4096, "image": 256, "numeric": 4096}
CALIBRATION_SAMPLE = 128  # items of the source that calibrate a static int8 export when none are given,
CALIBRATION_WINDOW = 4096  # spread over at most this many of its first items
MAX_TOKENS_PER_BATCH = {"cpu": 16384, "cuda": 131072}  # padded tokens per text batch, at most
IMAGE_SLICE = 32  # images per worker task: small, so encoding starts as soon as the first slice is decoded
PROGRESS_REFRESH_SECONDS = 1.0  # the bar is redrawn at least this often (elapsed time, rate, ETA), even when idle


@dataclass
class EmbedStats:
    """Counts and per-stage wall times of one job (stage times overlap: stages run concurrently)."""

    rows: int = 0
    embedded: int = 0
    cached: int = 0
    failed: int = 0
    duplicates: int = 0
    truncated: int = 0
    skipped: int = 0  # entries of the source that are not items (e.g. non-image files in a folder)
    skipped_examples: list[str] = field(default_factory=list)  # the first few, each with the reason
    seconds: dict[str, float] = field(default_factory=lambda: {
        "read": 0.0, "preprocess": 0.0, "encode": 0.0, "write": 0.0, "export": 0.0, "total": 0.0})
    session_created: bool = False

    @property
    def items_per_second(self) -> float:
        return self.rows / self.seconds["total"] if self.seconds["total"] else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "embedded": self.embedded, "cached": self.cached, "failed": self.failed,
                "duplicates": self.duplicates, "truncated": self.truncated, "skipped": self.skipped,
                "skipped_examples": list(self.skipped_examples),
                "items_per_second": round(self.items_per_second, 1), "session_created": self.session_created,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


@dataclass
class EmbedResult:
    """What :func:`embed` returns: one row per successfully embedded source row, in source order.

    ``vectors`` is read from the store on first access (rows sharing content share a key and
    so a vector). ``errors`` lists every failed row with its reason.
    """

    keys: list[str]
    refs: list[str]
    labels: list[str | None]
    errors: list[Any]
    backbone: str
    fingerprint: str
    precision: str
    modality: str
    store_path: Path
    stats: EmbedStats
    _vectors: np.ndarray | None = field(default=None, repr=False)

    @property
    def store(self):
        from ..store.features import FeatureStore

        return FeatureStore.load(self.store_path)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self.store.get(self.keys) if self.keys else np.empty((0, 0), np.float32)
        return self._vectors

    def __len__(self) -> int:
        return len(self.keys)

    def summary(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "fingerprint": self.fingerprint, "precision": self.precision,
                "store": str(self.store_path), **self.stats.as_dict(),
                "errors": [{"key": e.key, "ref": e.ref, "reason": e.reason, "stage": e.stage} for e in self.errors[:20]]}


# -- the work units passed from the producer thread to the encoder loop --------------------------------


@dataclass
class _Chunk:
    rows: list[tuple[str, str, str | None]]  # (key, ref, label) of every source row in the chunk
    todo_keys: list[str]
    todo_refs: list[str]
    prepared: Any  # list of prepared items, or a list of futures each giving (prepared, errors) for a slice
    errors: list[Any]  # ErrorRecord of items that failed before encoding
    cached_keys: list[str]


@dataclass
class Job:
    """The parts of an embedding job every engine shares: source, backbone, export, store, stats."""

    source: Any
    spec: Any
    exported: Any
    store: Any
    precision: str
    stats: EmbedStats = field(default_factory=EmbedStats)
    started: float = field(default_factory=time.perf_counter)
    read_errors: dict[str, str] = field(default_factory=dict)  # ref -> this row's own read error (see finish)

    def __post_init__(self) -> None:
        self.source = _RecordReadErrors(self.source, self.read_errors)

    def finish(self, rows: Sequence[tuple[str, str, str | None]], failed: dict[str, Any], strict: bool) -> EmbedResult:
        """Assemble the result (one entry per source row, failed rows to ``errors``); apply ``strict``.

        A row the reader could not read gets the reason the reader gave for *that* row now, never the stored
        record of its content key (which names the row of another file, or of an earlier run, that failed first).
        """
        keys, refs, labels, errors = [], [], [], []
        for key, ref, label in rows:
            record = failed.get(key)
            own = self.read_errors.get(ref)
            if own is not None:
                errors.append(_error_record(key, ref, own, "read"))
            elif record is not None:
                errors.append(_error_record(key, ref, record.reason, record.stage))
            else:
                keys.append(key)
                refs.append(ref)
                labels.append(label)
        stats = self.stats
        stats.rows, stats.failed = len(rows), len(errors)
        stats.skipped = int(getattr(self.source, "stats", {}).get("skipped", 0))
        stats.skipped_examples = list(getattr(self.source, "skipped_examples", []))
        stats.seconds["total"] = time.perf_counter() - self.started
        result = EmbedResult(keys=keys, refs=refs, labels=labels, errors=errors, backbone=self.spec.name,
                             fingerprint=self.exported.fingerprint, precision=self.precision,
                             modality=self.spec.modality, store_path=self.store.path, stats=stats)
        if strict and errors:
            first = errors[0]
            failure = ItemError(f"{len(errors)} item(s) failed, e.g. {first.ref}: {first.reason}",
                                hint="drop --strict to keep going past bad items; "
                                     "`headstart cache info --errors` lists them",
                                details={"summary": result.summary()})
            failure.result = result  # everything else was committed: callers may still report it
            raise failure
        return result


class _RecordReadErrors:
    """A source whose iteration also records each failed item's reason by ref (the rest is delegated)."""

    def __init__(self, source: Any, read_errors: dict[str, str]) -> None:
        self._source, self._read_errors = source, read_errors

    def __iter__(self) -> Iterator[Item]:
        for item in self._source:
            if item.error is not None:
                self._read_errors[item.ref] = item.error
            yield item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


def start_job(source: str | os.PathLike[str], backbone: str | Any | None, *, engine: Any, reader: str | None,
              reader_options: ReaderOptions | None, precision: str,
              calibration: Sequence[Any] | None = None) -> Job:
    """Open the source (schema checked), pick the backbone, find or make its export, open its store."""
    from ..backbones.export import export, find_export
    from ..backbones.resolve import default_backbone, resolve_backbone
    from ..store.features import FeatureStore
    from .sources import open_source

    started = time.perf_counter()
    settings = engine.settings
    src = open_source(str(source), reader_options, reader=reader, engine=engine)
    spec = resolve_backbone(backbone, engine) if backbone is not None else default_backbone(src.modality, engine)
    if spec.modality != src.modality:
        raise ConfigError(
            f"backbone '{spec.name}' embeds {spec.modality}, but {source} holds {src.modality} items",
            hint=f"pick a {src.modality} backbone (see `headstart backbones`)")
    stats = EmbedStats()
    t = time.perf_counter()
    exported = find_export(spec, precision, settings, calibration=calibration)
    if exported is None:
        if calibration is None and precision == "int8" and spec.modality != "text":
            calibration = calibration_sample(src)
        try:
            exported = export(spec, precision, settings=settings, engine=engine, calibration=calibration)
        except OSError as exc:
            from ..store.lock import READ_ONLY_ERRNOS, read_only_error

            if exc.errno not in READ_ONLY_ERRNOS:
                raise
            raise read_only_error(settings.exports_dir, f"exporting backbone '{spec.name}'", exc) from None
    stats.seconds["export"] = time.perf_counter() - t
    store = FeatureStore.open(settings.features_dir / exported.fingerprint, fingerprint=exported.fingerprint,
                              dim=spec.dim, backbone=spec.name, normalized=spec.normalize)
    return Job(source=src, spec=spec, exported=exported, store=store, precision=precision, stats=stats,
               started=started)


def calibration_sample(source: Any, size: int = CALIBRATION_SAMPLE, window: int = CALIBRATION_WINDOW) -> list[Any]:
    """``size`` readable items spread evenly over the first ``window`` items of ``source`` (fewer if it has
    fewer): static int8's calibration data when the caller gave none. The window bounds the extra read on
    a huge source, and at most ``2 * size`` payloads are held at once (every other one is dropped and the
    stride doubled when the buffer fills)."""
    kept: list[Any] = []
    stride = 1
    readable = (item.payload for item in itertools.islice(source, window) if item.error is None)
    for i, payload in enumerate(readable):
        if i % stride == 0:
            kept.append(payload)
            if len(kept) == 2 * size:
                kept, stride = kept[::2], stride * 2
    if len(kept) <= size:
        return kept
    picks = np.unique(np.linspace(0, len(kept) - 1, size).round().astype(int))
    return [kept[i] for i in picks]


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


def progress_bar(progress: bool | None, total: int | None, desc: str):
    """A tqdm bar on stderr (default: only when stderr is a terminal), or ``None``."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="item", desc=desc, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    stop = threading.Event()

    def tick() -> None:  # redraw (elapsed, rate, ETA) even while a batch or the session start takes long
        while not stop.wait(PROGRESS_REFRESH_SECONDS):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="headstart-progress", daemon=True)
    ticker.start()
    close = bar.close

    def close_bar() -> None:
        stop.set()
        ticker.join()
        close()

    bar.close = close_bar  # type: ignore[method-assign]
    return bar


def _error_record(key: str, ref: str, reason: str, stage: str):
    from ..store.features import ErrorRecord

    return ErrorRecord(key=key, ref=ref, reason=reason, stage=stage)


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
) -> EmbedResult:
    """Embed every item of ``source`` into the feature store of ``backbone`` and return the rows.

    ``backbone`` defaults to the default backbone of the source's modality (``minilm-l6`` for
    text, ``efficientnet-lite0`` for images). ``workers`` is the number of preprocessing
    processes for images (default: the CPU count; 0 preprocesses in this process).
    ``strict=True`` raises :class:`ItemError` after the job if any item failed (everything
    that succeeded is still committed). ``progress=None`` shows a bar when stderr is a terminal.
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
    rows: list[tuple[str, str, str | None]] = []
    failed: dict[str, Any] = {}
    try:
        with job.store.writer(update_index=False) as writer:  # the index is built on first search
            for chunk in _produce(job.source, job.store, preprocessor, pool, chunk_size, stats):
                rows.extend(chunk.rows)
                for record in chunk.errors:
                    failed[record.key] = record
                if chunk.cached_keys:
                    failed.update(job.store.errors_for(chunk.cached_keys))
                writer.require_writable(len(chunk.todo_keys) + len(chunk.errors))  # read-only store: fail now
                if chunk.todo_keys:
                    encoder.start()  # the session loads while the first slices decode
                done = bar.n if bar is not None else 0
                if bar is not None:  # cached, duplicate and unreadable rows are done already
                    bar.update(len(chunk.rows) - len(chunk.todo_keys))
                vectors, keys, refs, errors = _encode_chunk(chunk, preprocessor, encoder, spec, batch_size, stats,
                                                            advance=bar.update if bar is not None else None)
                for record in errors:
                    failed[record.key] = record
                t = time.perf_counter()
                if keys:
                    writer.add(keys, vectors, refs)
                if chunk.errors or errors:
                    writer.add_errors([*chunk.errors, *errors])
                writer.commit()  # one shard per chunk: a killed job loses at most the chunk in flight
                stats.seconds["write"] += time.perf_counter() - t
                if bar is not None:  # the rest of the chunk (items that failed before encoding)
                    bar.update(done + len(chunk.rows) - bar.n)
    finally:
        if bar is not None:
            bar.close()
        pool.shutdown()
    return job.finish(rows, failed, strict)


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


def _produce(src, store, preprocessor, pool, chunk_size: int, stats: EmbedStats) -> Iterator[_Chunk]:
    """Read, deduplicate, look up and preprocess chunks in a background thread (bounded queue)."""
    out: queue.Queue = queue.Queue(maxsize=2)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            seen: set[str] = set()
            iterator = iter(src)
            while not stop.is_set():
                t = time.perf_counter()
                chunk = list(itertools.islice(iterator, chunk_size))
                stats.seconds["read"] += time.perf_counter() - t
                if not chunk:
                    break
                out.put(_plan_chunk(chunk, store, seen, preprocessor, pool, stats))
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


def _plan_chunk(items: list[Item], store, seen: set[str], preprocessor, pool, stats: EmbedStats) -> _Chunk:
    rows = [(it.key, it.ref, it.label) for it in items]
    present = store.contains([it.key for it in items])
    errors, todo, cached = [], [], []
    for item, is_present in zip(items, present):
        if is_present:
            if item.key not in seen:
                stats.cached += 1
                cached.append(item.key)
            else:
                stats.duplicates += 1
            seen.add(item.key)
            continue
        if item.key in seen:
            stats.duplicates += 1
            continue
        seen.add(item.key)
        if item.error is not None:
            errors.append(_error_record(item.key, item.ref, item.error, "read"))
        else:
            todo.append(item)
    payloads = [it.payload for it in todo]
    t = time.perf_counter()
    if payloads and pool.get() is not None:
        step = max(1, min(IMAGE_SLICE, -(-len(payloads) // (2 * (os.cpu_count() or 1)))))
        prepared: Any = [pool.get().submit(_prepare_slice, preprocessor, payloads[i:i + step])
                         for i in range(0, len(payloads), step)]
    else:
        prepared = preprocessor.prepare_many(payloads) if payloads else []
    stats.seconds["preprocess"] += time.perf_counter() - t
    return _Chunk(rows=rows, todo_keys=[it.key for it in todo], todo_refs=[it.ref for it in todo],
                  prepared=prepared, errors=errors, cached_keys=cached)


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
    """Run the encoder over a chunk's prepared items, each worker slice as soon as it is ready;
    ``advance(n)`` is called after each encoded batch (the progress bar moves per batch, not per chunk).

    Returns (vectors, keys, refs, error records) for the chunk.
    """
    from .batching import length_sorted_batches

    device = "cpu"
    if chunk.todo_keys and (batch_size is None or spec.modality == "text"):
        device = encoder.device  # the defaults differ by device
    batch_size = batch_size or (DEFAULT_BATCH_SIZE_CUDA if device == "cuda" else DEFAULT_BATCH_SIZE)[spec.modality]
    max_tokens = MAX_TOKENS_PER_BATCH[device] if spec.modality == "text" else None
    keys: list[str] = []
    refs: list[str] = []
    parts: list[np.ndarray] = []
    errors = []
    for offset, prepared in _prepared_slices(chunk, stats):
        good = []
        for i, p in enumerate(prepared, start=offset):
            if isinstance(p, BaseException):
                reason = p.message if isinstance(p, HeadstartError) else f"{type(p).__name__}: {p}"
                errors.append(_error_record(chunk.todo_keys[i], chunk.todo_refs[i], reason, "preprocess"))
            else:
                good.append(i)
                stats.truncated += bool(preprocessor.truncated(p))
        if not good:
            continue
        items = [prepared[i - offset] for i in good]
        vectors = np.empty((len(items), spec.dim), dtype=np.float32)
        t = time.perf_counter()
        for batch in length_sorted_batches(items, preprocessor.length, batch_size, max_tokens):
            vectors[batch] = encoder.run(preprocessor.collate([items[i] for i in batch]))
            if advance is not None:
                advance(len(batch))
        stats.seconds["encode"] += time.perf_counter() - t
        finite = np.isfinite(vectors).all(axis=1)
        for row, i in enumerate(good):
            if finite[row]:
                keys.append(chunk.todo_keys[i])
                refs.append(chunk.todo_refs[i])
            else:
                errors.append(_error_record(chunk.todo_keys[i], chunk.todo_refs[i],
                                            "the backbone produced NaN/Inf for this item", "encode"))
        parts.append(vectors[finite])
    stats.embedded += len(keys)
    vectors = np.concatenate(parts) if parts else None
    return vectors, keys, refs, errors
