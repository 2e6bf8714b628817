"""The parts of an embedding job every engine shares (the local pipeline and Ray): opening the source,
picking the backbone, finding or making its export, opening its store, the stats, and the result.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, ItemError
from .items import Item, ReaderOptions, item_batches
from .rowtable import RowTable, RowTableBuilder

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
MAX_ERRORS_KEPT = 100  # error records a result without per-row state keeps (all are counted in stats.failed)
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

    The rows are compact columns (``rows``, a :class:`~.rowtable.RowTable`: key digests, label codes
    and, unless the job was asked not to keep them, refs); ``keys``, ``refs`` and ``labels`` are
    lists made from them on first access (keys through the store), for callers of small results.
    ``row_ids`` are the rows' ids in the store and ``vectors`` their vectors (both read on first access;
    rows sharing content share a key and so a vector). ``errors`` lists every failed row with its reason.
    """

    rows: RowTable
    errors: list[Any]
    backbone: str
    fingerprint: str
    precision: str
    modality: str
    store_path: Path
    stats: EmbedStats
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _ids: np.ndarray | None = field(default=None, repr=False)
    _lists: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    @property
    def store(self):
        from ..store.features import FeatureStore

        return FeatureStore.load(self.store_path)

    @property
    def row_ids(self) -> np.ndarray:
        """The rows' ids in the store (int64, looked up by key digest once). The look-up checks only the shards
        its hits are in, by size and mtime (``check="hits"``): the vectors of each shard are hashed and checked
        when they are first read, so the look-up does not read the whole store a first time."""
        if self._ids is None:
            from ..store.features import FeatureStore

            self._ids = (FeatureStore.load(self.store_path, check="hits").ids(self.rows.digests) if len(self.rows)
                         else np.empty(0, np.int64))
        return self._ids

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self.store.read_rows(self.row_ids) if len(self.rows) else np.empty((0, 0), np.float32)
        return self._vectors

    @property
    def keys(self) -> list[str]:
        if "keys" not in self._lists:
            self._lists["keys"] = self.rows.keys if self.rows.keys is not None else \
                (self.store.keys_at(self.row_ids).tolist() if len(self.rows) else [])
        return self._lists["keys"]

    @property
    def refs(self) -> list[str]:
        """Each row's ref (kept refs; for a job that kept none, the ref the store recorded for its key)."""
        if "refs" not in self._lists:
            refs = self.rows.refs
            if refs is None:
                refs = self.store.refs_at(self.row_ids) if len(self.rows) else []
            self._lists["refs"] = refs if isinstance(refs, list) else refs.to_pylist()
        return self._lists["refs"]

    @property
    def labels(self) -> list[str | None]:
        if "labels" not in self._lists:
            self._lists["labels"] = self.rows.labels()
        return self._lists["labels"]

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "fingerprint": self.fingerprint, "precision": self.precision,
                "store": str(self.store_path), **self.stats.as_dict(),
                "errors": [{"key": e.key, "ref": e.ref, "reason": e.reason, "stage": e.stage} for e in self.errors[:20]]}


#: ``keep_rows`` value: keep the good rows' key digests and labels, not their refs (train and eval)
KEEP_COLUMNS = "columns"


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

    def finish(self, rows: Sequence[tuple[str, str, str | None]] | None, failed: dict[str, Any], strict: bool,
               errors: Sequence[Any] | None = None,
               kept: RowTable | tuple[list[str], list[str], list[str | None]] | None = None) -> EmbedResult:
        """Assemble the result (one entry per source row, failed rows to ``errors``); apply ``strict``.

        A row the reader could not read gets the reason the reader gave for *that* row now, never the stored
        record of its content key (which names the row of another file, or of an earlier run, that failed first).
        ``rows=None``: an engine that keeps no per-row state passes the error records of failed rows as
        ``errors``, has set ``stats.rows``/``stats.failed``, and gives the good rows as ``kept`` (a RowTable,
        or lists of keys, refs, labels) or none (the result then lists no rows).
        """
        if rows is None:
            errors = list(errors or [])
            if isinstance(kept, RowTable):
                table = kept
            else:
                keys, refs, labels = kept if kept is not None else ([], [], [])
                table = RowTable.from_lists(keys, refs, labels)
        else:
            errors = []
            builder = RowTableBuilder()
            for key, ref, label in rows:
                record = failed.get(key)
                own = self.read_errors.get(ref)
                if own is not None:
                    errors.append(error_record(key, ref, own, "read"))
                elif record is not None:
                    errors.append(error_record(key, ref, record.reason, record.stage))
                else:
                    builder.add([key], [ref], [label])
            table = builder.build()
        stats = self.stats
        if rows is not None:
            stats.rows = len(rows)
            stats.skipped = int(getattr(self.source, "stats", {}).get("skipped", 0))
            stats.skipped_examples = list(getattr(self.source, "skipped_examples", []))
        if rows is not None:
            stats.failed = len(errors)
        stats.seconds["total"] = time.perf_counter() - self.started
        result = EmbedResult(rows=table, errors=errors, backbone=self.spec.name,
                             fingerprint=self.exported.fingerprint, precision=self.precision,
                             modality=self.spec.modality, store_path=self.store.path, stats=stats)
        if strict and errors:
            first = errors[0]
            failure = ItemError(f"{stats.failed} item(s) failed, e.g. {first.ref}: {first.reason}",
                                hint="drop --strict to keep going past bad items; "
                                     "`headstart cache info --errors` lists them",
                                details={"summary": result.summary()})
            failure.result = result  # everything else was committed: callers may still report it
            raise failure
        return result


class Rows:
    """The result's rows, gathered chunk by chunk as each chunk's outcome is known: counts always; with
    ``keep`` the good rows as compact columns (key digest, label code and, unless ``keep`` is
    :data:`KEEP_COLUMNS`, ref; see :mod:`.rowtable`) and every error record, else only the first
    ``max_errors`` error records (memory then does not grow with the number of rows)."""

    def __init__(self, keep: bool | str = True, max_errors: int | None = None) -> None:
        self.keep, self.max_errors = bool(keep), max_errors
        self.table = RowTableBuilder(keep_refs=keep is not False and keep != KEEP_COLUMNS)
        self.errors: list[Any] = []
        self.count = self.failed = 0

    def add(self, job: "Job", keys: Sequence[str], refs: Sequence[str], labels: Sequence[str | None],
            failed: dict[str, Any]) -> None:
        """Fold in a chunk's rows (key, ref and label of each); ``failed`` maps each failed key to its error record.

        A row the reader could not read gets the reason the reader gave for *that* row, never the stored
        record of its content key (which names the row of another file, or of an earlier run, that failed first).
        """
        self.count += len(keys)
        read_errors = job.read_errors
        if not failed and not read_errors:
            if self.keep:
                self.table.add(keys, refs, labels)
            return
        good: list[int] = []
        for i, (key, ref) in enumerate(zip(keys, refs)):
            own = read_errors.get(ref) if read_errors else None
            record = failed.get(key) if failed else None
            if own is None and record is None:
                good.append(i)
                continue
            self.failed += 1
            if self.max_errors is None or len(self.errors) < self.max_errors:
                self.errors.append(error_record(key, ref, own, "read") if own is not None
                                   else error_record(key, ref, record.reason, record.stage))
        if self.keep and good:
            if len(good) == len(keys):
                self.table.add(keys, refs, labels)
            else:
                self.table.add([keys[i] for i in good], [refs[i] for i in good], [labels[i] for i in good])

    def finish(self, job: "Job", strict: bool) -> "EmbedResult":
        stats = job.stats
        stats.rows, stats.failed = self.count, self.failed
        stats.skipped = int(getattr(job.source, "stats", {}).get("skipped", 0))
        stats.skipped_examples = list(getattr(job.source, "skipped_examples", []))
        kept = self.table.build() if self.keep else None
        return job.finish(None, {}, strict, errors=self.errors, kept=kept)


class _RecordReadErrors:
    """A source whose iteration also records each failed item's reason by ref (the rest is delegated)."""

    def __init__(self, source: Any, read_errors: dict[str, str]) -> None:
        self._source, self._read_errors = source, read_errors

    def __iter__(self) -> Iterator[Item]:
        for item in self._source:
            if item.error is not None:
                self._read_errors[item.ref] = item.error
            yield item

    def batches(self, size: int) -> Iterator[Any]:
        """The source's item batches (:func:`~.items.item_batches`), recording each failed row's reason by ref."""
        for batch in item_batches(self._source, size):
            for i, reason in batch.errors.items():
                self._read_errors[batch.refs[i]] = reason
            yield batch

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
    from ..sequences.backbone import backbone_vocabulary

    reader_options = backbone_vocabulary(reader_options, backbone, engine)  # categorical ids: the backbone's
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


def error_record(key: str, ref: str, reason: str, stage: str):
    from ..store.features import ErrorRecord

    return ErrorRecord(key=key, ref=ref, reason=reason, stage=stage)

