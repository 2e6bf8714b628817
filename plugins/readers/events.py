"""Events in, sequences out: an event table (CSV/TSV, JSONL, Parquet) read as one numeric item per entity or
per event-with-history (``ReaderOptions.events``; the CSV/JSONL/Parquet readers hand over to this one).

Streaming design: the table is read batch by batch (Parquet row groups, CSV/JSONL blocks), never whole. The rows of
one entity (``group_by``) must be **together** in the file (sorted or clustered by the group column); this is
verified while reading (the finished entities are kept as 8-byte key hashes, :class:`FinishedEntities`), and an
entity that shows up again after another one is an error naming both rows. Within an entity, rows may come in any
order: they are sorted by ``order_by`` in memory (one entity at a time). A missing ``order_by`` value fails that
entity's items with the row named; a missing numeric field fails the items whose window holds that row.

Each item is a float32 array ``(steps, len(fields) + len(categorical))``, oldest step first; categorical values
are ids from the vocabulary (0 missing, 1 unseen). Its content key is the hash of those bytes: re-runs and
overlapping windows with the same events are cache hits.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from headstart.sdk import (EventOptions, Item, ReaderError, ReaderOptions, SchemaError, Vocabulary, did_you_mean,
                           event_record_batches, event_table_schema)

from ._common import LABEL_DEFAULTS, display_path, new_stats, pick_column, read_label

MISSING_ID, UNSEEN_ID = 0, 1


class EventSource:
    """An opened event table; columns, types and the vocabulary are checked in ``__init__``."""

    modality = "numeric"

    def __init__(self, path: str, options: ReaderOptions) -> None:
        self.path, self.options, self.events = path, options, options.events
        self.name = display_path(path)
        self.stats = new_stats()
        ev: EventOptions = self.events
        schema = event_table_schema(path)
        self.columns = list(schema.names)
        for option, names in (("--group-by", [ev.group_by]), ("--order-by", [ev.order_by]), ("--fields", ev.fields),
                              ("--categorical", ev.categorical)):
            for name in names:
                self._need(name, option)
        for name in ev.fields:
            if not _numeric(schema.field(name).type):
                raise SchemaError(f"--fields column '{name}' of {self.name} is not numeric "
                                  f"(type {schema.field(name).type})",
                                  hint="give numeric columns with --fields and text/id columns with --categorical")
        order_type = schema.field(ev.order_by).type
        self.order_kind = "time" if _temporal(order_type) else "number" if _numeric(order_type) else "text"
        if ev.span is not None and self.order_kind == "text":
            raise SchemaError(f"--window {ev.span:g}s needs a timestamp or numeric --order-by column; "
                              f"'{ev.order_by}' of {self.name} has type {order_type}",
                              hint="pass --window N (the last N events), or order by a timestamp column")
        label = None
        if options.labelled is not False:
            label = pick_column(self.columns, options.label_column, LABEL_DEFAULTS, "label", self.name,
                                "--label-column")
            if options.labelled and label is None:
                raise SchemaError(f"no label column in {self.name}; columns present: {', '.join(self.columns)}",
                                  hint=f"pass --label-column (defaults tried: {', '.join(LABEL_DEFAULTS)})")
        if label is not None and label in ev.columns:
            raise SchemaError(f"label column '{label}' of {self.name} is also an event column",
                              hint="a label must not be an input; pass --label-column with another column")
        self.label_column, self.has_labels = label, label is not None
        if ev.categorical and ev.vocabulary is None:
            raise SchemaError(f"the categorical columns ({', '.join(ev.categorical)}) of {self.name} need a vocabulary",
                              hint="pass --vocabulary FILE, or a backbone made by headstart pretrain (it carries its "
                                   "vocabulary.json)")
        vocab = Vocabulary.load(ev.vocabulary, ev.categorical) if ev.categorical else None
        self.ids = [vocab.ids(c) for c in ev.categorical] if vocab else []
        self.width = ev.width

    def _need(self, name: str, option: str) -> None:
        if name not in self.columns:
            guess = did_you_mean(name, self.columns)
            raise SchemaError(f"{option} column '{name}' not found in {self.name}; columns present: "
                              f"{', '.join(self.columns)}" + (f"; did you mean '{guess}'?" if guess else ""),
                              hint=f"pass {option} with one of the columns present")

    def estimate_count(self) -> int | None:
        if self.events.per == "event" and self.path.lower().endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        return None

    # -- reading ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Item]:
        self.stats = new_stats()
        ev = self.events
        wanted = ev.columns + ([self.label_column] if self.label_column else [])
        group: dict[str, Any] | None = None
        done = FinishedEntities()  # to refuse an entity seen again, in 8 bytes per entity
        row0 = 0
        for batch in event_record_batches(self.path, list(dict.fromkeys(wanted))):
            cols = self._columns(batch)
            keys = cols["group"]
            n = len(keys)
            starts = [0] + [i for i in range(1, n) if keys[i] != keys[i - 1]] + [n]
            for a, b in zip(starts[:-1], starts[1:]):
                key = keys[a]
                if group is None or group["key"] != key:
                    if group is not None:
                        yield from self._emit(group)
                        done.add(group["key"])
                    if key in done:
                        earlier = self._earlier_rows_end(key, row0 + a + 1)
                        if earlier is not None:
                            raise ReaderError(
                                f"{self.name}: row {row0 + a + 1} has {ev.group_by}={key!r} again after other "
                                f"entities (its earlier rows end at row {earlier}); the rows of each entity must "
                                "be together in the file",
                                hint=f"sort the table by {ev.group_by} (then {ev.order_by}) before reading it as "
                                     "events")
                    group = {"key": key, "first_row": row0 + a + 1, "parts": []}
                group["parts"].append(_slice(cols, a, b))
                group["last_row"] = row0 + b
            row0 += n
        if group is not None:
            yield from self._emit(group)

    def _earlier_rows_end(self, key: Any, row: int) -> int | None:
        """The last row of ``key``'s earlier run before data row ``row`` (re-reading the group column up to it),
        or None when it has none (the 64-bit hashes of two keys collided)."""
        last, row0 = None, 0
        for batch in event_record_batches(self.path, [self.events.group_by]):
            for i, value in enumerate(batch.column(0).to_pylist()):
                if row0 + i + 1 >= row:
                    return last
                if value == key:
                    last = row0 + i + 1
            row0 += batch.num_rows
        return last

    def _columns(self, batch: Any) -> dict[str, Any]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        ev = self.events
        order = batch.column(ev.order_by)
        if self.order_kind == "time":
            tz = order.type.tz if pa.types.is_timestamp(order.type) else None  # dates become midnight
            micros = order.cast(pa.timestamp("us", tz)).cast(pa.int64())
            order_values = pc.divide(micros.cast(pa.float64()), 1e6).to_numpy(zero_copy_only=False)
            order_null = np.asarray(order.is_null())
        elif self.order_kind == "number":
            order_values = order.cast(pa.float64()).to_numpy(zero_copy_only=False)
            order_null = np.asarray(order.is_null())
        else:
            order_values = np.asarray(order.to_pylist(), dtype=object)
            order_null = np.asarray([v is None for v in order_values], dtype=bool)
        steps = np.zeros((batch.num_rows, self.width), dtype=np.float64)
        for j, name in enumerate(ev.fields):
            steps[:, j] = batch.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
        for j, (name, ids) in enumerate(zip(ev.categorical, self.ids)):
            steps[:, len(ev.fields) + j] = [MISSING_ID if v is None else ids.get(str(v), UNSEEN_ID)
                                            for v in batch.column(name).to_pylist()]
        labels = batch.column(self.label_column).to_pylist() if self.label_column else [None] * batch.num_rows
        return {"group": batch.column(ev.group_by).to_pylist(), "order": order_values, "order_null": order_null,
                "steps": steps, "labels": labels}

    def _emit(self, group: dict[str, Any]) -> Iterator[Item]:
        import numpy as np

        ev = self.events
        parts = group["parts"]
        order = np.concatenate([p["order"] for p in parts])
        order_null = np.concatenate([p["order_null"] for p in parts])
        steps = np.concatenate([p["steps"] for p in parts])
        labels = [v for p in parts for v in p["labels"]]
        rows = np.arange(group["first_row"], group["first_row"] + len(steps))
        where = f"{ev.group_by}={group['key']!r}"
        if order_null.any():
            bad = int(rows[np.argmax(order_null)])
            reason = (f"{self.name}:row {bad} ({where}): --order-by column '{ev.order_by}' is empty, so the "
                      "entity's events cannot be ordered")
            refs = [f"{self.name}:row {r} ({where})" for r in rows] if ev.per == "event" else \
                [f"{self.name}:{where} (rows {rows[0]}-{rows[-1]})"]
            for ref in refs:
                yield self._failed(ref, reason)
            return
        if self.order_kind == "text":
            perm = np.asarray(sorted(range(len(order)), key=lambda i: (order[i], i)), dtype=np.int64)
        else:
            perm = np.lexsort((rows, order))
        order, steps, rows = order[perm], steps[perm], rows[perm]
        labels = [labels[i] for i in perm]
        missing = np.isnan(steps).any(axis=1)
        if ev.per == "entity":
            found = {lab for lab in (self._label(v, f"{self.name}:{where}") for v in labels) if lab[0] or lab[1]}
            bad_labels = [b for _, b in found if b]
            values = sorted({lab for lab, _ in found if lab})
            ref = f"{self.name}:{where} (rows {int(rows.min())}-{int(rows.max())})"
            if bad_labels:
                yield self._failed(ref, bad_labels[0])
            elif len(values) > 1:
                yield self._failed(ref, f"{ref}: the entity's rows have different labels ({', '.join(values)}); "
                                        "per-entity items need one label per entity (or read --per event)")
            else:
                yield self._item(ref, self._window(order, len(order) - 1), steps, rows, missing,
                                 values[0] if values else None)
            return
        for i in range(len(order)):
            ref = f"{self.name}:row {int(rows[i])} ({where})"
            label, bad = self._label(labels[i], ref)
            if bad:
                yield self._failed(ref, bad)
                continue
            yield self._item(ref, self._window(order, i), steps, rows, missing, label)

    def _window(self, order: Any, i: int) -> slice:
        """Rows of the window that ends at sorted position ``i``."""
        import numpy as np

        ev = self.events
        if ev.span is None:
            return slice(max(0, i - ev.window + 1), i + 1)
        start = int(np.searchsorted(order[: i + 1], order[i] - ev.span, side="left"))
        return slice(start, i + 1)

    def _label(self, value: Any, ref: str) -> tuple[str | None, str | None]:
        return read_label(value, self.label_column, ref) if self.label_column else (None, None)

    def _item(self, ref: str, window: slice, steps: Any, rows: Any, missing: Any, label: str | None) -> Item:
        import numpy as np

        if missing[window].any():
            bad = int(rows[window][np.argmax(missing[window])])
            empty = [f for j, f in enumerate(self.events.fields) if np.isnan(steps[bad == rows][0, j])]
            return self._failed(ref, f"{ref}: row {bad} has no value in field(s) {', '.join(empty)}", label)
        self.stats["items"] += 1
        return Item.make(ref, np.ascontiguousarray(steps[window], dtype=np.float32), "numeric", label=label)

    def _failed(self, ref: str, reason: str, label: str | None = None) -> Item:
        self.stats["items"] += 1
        self.stats["failed"] += 1
        return Item.failed(ref, reason, "numeric", label=label)


def _slice(cols: dict[str, Any], a: int, b: int) -> dict[str, Any]:
    return {"order": cols["order"][a:b], "order_null": cols["order_null"][a:b], "steps": cols["steps"][a:b],
            "labels": cols["labels"][a:b]}


class FinishedEntities:
    """The entities already read, as 64-bit hashes of their keys: a sorted numpy array plus a small set of
    recent ones merged into it in steps, so memory is 8 bytes per entity (a dict of keys took ~120). A hit is
    confirmed by the caller (a re-read of the group column), so a hash collision never fails a table."""

    MERGE_EVERY = 1 << 16

    def __init__(self) -> None:
        import numpy as np

        self._sorted = np.zeros(0, dtype=np.uint64)
        self._recent: set[int] = set()

    @staticmethod
    def _hash(key: Any) -> int:
        import hashlib

        return int.from_bytes(hashlib.blake2b(f"{type(key).__name__}:{key!r}".encode(), digest_size=8).digest(),
                              "little")

    def add(self, key: Any) -> None:
        import numpy as np

        self._recent.add(self._hash(key))
        if len(self._recent) >= self.MERGE_EVERY:
            merged = np.concatenate([self._sorted, np.fromiter(self._recent, np.uint64, len(self._recent))])
            merged.sort()
            self._sorted, self._recent = merged, set()

    def __contains__(self, key: Any) -> bool:
        import numpy as np

        h = self._hash(key)
        if h in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(h)))
        return i < len(self._sorted) and int(self._sorted[i]) == h


def _numeric(t: Any) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t)


def _temporal(t: Any) -> bool:
    import pyarrow.types as pt

    return pt.is_timestamp(t) or pt.is_date(t)


def open_events(source: str, options: ReaderOptions) -> EventSource:
    return EventSource(os.fspath(source), options)
