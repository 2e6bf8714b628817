"""What runs on a Ray worker: read one split of the source, skip stored keys, encode, stage shard files.

A :class:`SplitWorker` actor opens the source with the same reader plugin as the driver, reads the
split it is given (``source.read_split``; the whole source when the reader has no splits), computes
content keys, drops keys already in the store (read-only lookups on the store as committed when the split
starts: what earlier runs and earlier splits stored; a key met by two splits running at once is embedded
by both, and the store keeps both rows of the same vector), runs the
shared encode step (:func:`headstart.engine.embed.encode.encode_prepared`), and writes each chunk as an
immutable shard file straight into the store directory (:func:`shards.write_shard_file`). It returns the
manifest entries of those files and a few counts, never vectors or payloads: the driver commits them.
A file staged by a worker that dies before returning is never committed; the next writer that opens
the store removes it as an orphan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..embed.items import item_batches
from ..errors import HeadstartError
from ..faultpoints import pause_point


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker needs, shipped once per actor (small: no payloads)."""

    store_path: Path
    source: str
    reader: str
    reader_options: Any
    exported: Any
    preprocessor: Any
    modality: str
    dim: int
    device: str
    threads: int
    batch_size: int | None
    chunk_size: int
    prefix: str
    keep_rows: bool
    max_errors: int
    writable: bool = True
    shipped: Any = None
    home: str | None = None  # the driver's HEADSTART_HOME (export cache, plugins)


@dataclass
class SplitResult:
    """What a worker returns for one split: shard entries to commit and counts (plus rows with ``keep_rows``)."""

    index: int
    entries: list[dict] = field(default_factory=list)
    rows: int = 0
    embedded: int = 0
    cached: int = 0
    duplicates: int = 0
    failed: int = 0
    truncated: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    errors: list[tuple[str, str, str, str]] = field(default_factory=list)  # (key, ref, reason, stage), capped
    row_list: list[tuple[str, str, str | None]] | None = None  # with keep_rows: (key, ref, label) per good row
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "preprocess": 0.0, "encode": 0.0,
                                                               "write": 0.0})
    session: bool = False


def materialize_export(exported, files: dict[str, bytes], exports_dir: Path):
    """Write a shipped export (``files``: name -> bytes) under ``exports_dir`` on this node; return it there.

    Used on nodes that do not share the driver's export cache. The encoder then checks every
    file's sha256 against the export manifest, so a damaged copy is refused, never run.
    """
    from dataclasses import replace

    from ..store.atomic import write_bytes_atomic

    folder = Path(exports_dir) / exported.path.parent.parent.name / exported.fingerprint
    for name, data in files.items():
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise HeadstartError(f"shipped export file {name!r} of '{exported.name}' leaves its folder",
                                 hint="re-run from a driver with an intact export cache")
        if not target.exists():
            write_bytes_atomic(target, data)
    return replace(exported, path=folder / exported.path.name)


class SplitWorker:
    """A Ray actor (see the module docstring); the onnxruntime session is created on the first item to encode."""

    def __init__(self, task: WorkerTask) -> None:
        import os

        if task.home is not None:
            os.environ["HEADSTART_HOME"] = task.home
        self.task = task
        self._source = None
        self._store = None
        self._encoder = None

    def source(self):
        if self._source is None:
            from ..embed.sources import open_source

            self._source = open_source(self.task.source, self.task.reader_options, reader=self.task.reader)
        return self._source

    def _snapshot(self) -> None:
        """A read-only view of the store as committed now: lookups skip what earlier splits (and runs) stored."""
        from ..store.features import FeatureStore

        self._store = FeatureStore.load(self.task.store_path, check="hits")  # hash only the shards hit

    def encoder(self):
        if self._encoder is None:
            exported = self.task.exported
            if not exported.path.exists():
                exported = self._materialize(exported)
            from ..backbones.runtime import Encoder

            self._encoder = Encoder(exported, device=self.task.device, threads=self.task.threads)
        return self._encoder

    def _materialize(self, exported):
        import ray

        if self.task.shipped is None:
            raise HeadstartError(f"export {exported.path} of '{exported.name}' is not on this node",
                                 hint="share the export cache between nodes, or let the driver ship it")
        from ..config import Settings

        return materialize_export(exported, ray.get(self.task.shipped), Settings.from_env().exports_dir)

    def run(self, index: int, split: Any) -> SplitResult:
        """Embed split ``index`` (``None``: the whole source) and stage its shards; see the module docstring."""
        source = self.source()
        self._snapshot()
        batches = item_batches(source, self.task.chunk_size, split)  # keys computed a batch at a time
        out = SplitResult(index=index, row_list=[] if self.task.keep_rows else None)
        seen: set[str] = set()
        failed: dict[str, Any] = {}  # key -> ErrorRecord, for this split's later duplicates
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            out.seconds["read"] += time.perf_counter() - t
            if batch is None:
                break
            if len(batch):
                self._chunk(list(batch), seen, failed, out)
        stats = getattr(source, "stats", {}) or {}
        out.skipped = int(stats.get("skipped", 0))
        out.skipped_examples = list(getattr(source, "skipped_examples", []))[:5]
        return out

    def _chunk(self, chunk: list, seen: set[str], failed: dict[str, Any], out: SplitResult) -> None:
        from ..embed.encode import batch_settings, encode_prepared
        from ..embed.job import error_record

        task, store = self.task, self._store
        pause_point("ray-block", keys=[it.key for it in chunk])
        present = store.contains([it.key for it in chunk])
        todo, new_errors, cached = [], [], []
        for item, have in zip(chunk, present):
            if item.key in seen:
                out.duplicates += 1
                continue
            seen.add(item.key)
            if have:
                out.cached += 1
                cached.append(item.key)
            elif item.error is not None:
                record = error_record(item.key, item.ref, item.error, "read")
                new_errors.append(record)
                failed[item.key] = record
            else:
                todo.append(item)
        if cached:
            failed.update(store.errors_for(cached))
        vectors, keys, refs = None, [], []
        if todo:
            self._require_writable(len(todo))
            t = time.perf_counter()
            prepared = task.preprocessor.prepare_many([it.payload for it in todo])
            out.seconds["preprocess"] += time.perf_counter() - t
            encoder = self.encoder()
            out.session = True
            size, max_tokens = batch_settings(task.modality, encoder.device, task.batch_size)
            encoded = encode_prepared([(0, prepared)], [it.key for it in todo], [it.ref for it in todo],
                                      task.preprocessor, encoder.run, task.dim, size, max_tokens)
            out.seconds["encode"] += encoded.seconds
            out.truncated += encoded.truncated
            out.embedded += len(encoded.keys)
            vectors, keys, refs = encoded.vectors, encoded.keys, encoded.refs
            for record in encoded.errors:
                failed[record.key] = record
            new_errors.extend(encoded.errors)
        t = time.perf_counter()
        self._stage(keys, refs, vectors, new_errors, out)
        out.seconds["write"] += time.perf_counter() - t
        self._report_rows(chunk, failed, out)

    def _require_writable(self, n: int) -> None:
        if not self.task.writable:
            from ..store.lock import read_only_error

            raise read_only_error(self.task.store_path, f"storing {n} item(s) that are not cached")

    def _stage(self, keys: list[str], refs: list[str], vectors: Any, errors: list[Any], out: SplitResult) -> None:
        """Write this chunk's vector shard and error shard into the store directory (not yet committed)."""
        from ..store import shards

        task = self.task
        if errors:
            self._require_writable(len(errors))
        prefix = f"{task.prefix}-{out.index:06d}"
        if keys:
            entry = shards.write_shard_file(task.store_path, shards.VECTORS,
                                            shards.vector_table(keys, refs, vectors), prefix=prefix)
            out.entries.append(entry)
            pause_point("ray-shard-written", file=entry["file"], keys=keys)
        if errors:
            table = shards.error_table([r.key for r in errors], [r.ref for r in errors],
                                       [r.reason for r in errors], [r.stage for r in errors])
            out.entries.append(shards.write_shard_file(task.store_path, shards.ERRORS, table, prefix=prefix))

    def _report_rows(self, chunk: list, failed: dict[str, Any], out: SplitResult) -> None:
        """Count this chunk's rows; a failed row reports its own read error, else its key's error record."""
        for item in chunk:
            out.rows += 1
            record = failed.get(item.key)
            if item.error is not None:
                error = (item.key, item.ref, item.error, "read")
            elif record is not None:
                error = (item.key, item.ref, record.reason, record.stage)
            else:
                if out.row_list is not None:
                    out.row_list.append((item.key, item.ref, item.label))
                continue
            out.failed += 1
            if out.row_list is not None or len(out.errors) < self.task.max_errors:
                out.errors.append(error)
