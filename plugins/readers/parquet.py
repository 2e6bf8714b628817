"""Parquet reader: streamed with ``pyarrow.parquet.ParquetFile.iter_batches``.

The input column decides the modality:

* a string (or binary, decoded as UTF-8) column -> ``text`` items;
* a list / fixed-size-list column of numbers -> ``numeric`` items, one array per row;
* with no text column named or found, several numeric scalar columns -> ``numeric`` items,
  each row the vector of those columns in schema order.

Column defaults are those of the CSV reader; a null input makes that row a failed item.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from headstart.sdk import Item, ItemBatch, ReaderOptions, RowRefs, SchemaError, failed_key, row_keys, text_keys

from ._common import (LABEL_DEFAULTS, TEXT_DEFAULTS, all_empty_labels, bad_utf8, decode, display_path, has_label,
                      new_stats, pick_column, read_label)

BATCH_ROWS = 1024


class ParquetSource:
    """An opened Parquet file; the schema is checked in ``__init__``."""

    def __init__(self, path: str, options: ReaderOptions) -> None:
        import pyarrow.parquet as pq

        self.path, self.options = path, options
        self.name = display_path(path)
        self.stats = new_stats()
        try:
            self.file = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError on bad files
            raise SchemaError(f"{self.name} is not a readable Parquet file: {exc}",
                              hint="check the file was fully written") from None
        schema = self.file.schema_arrow
        self.columns = list(schema.names)
        self.label_column = self._label(options)
        self.inputs, self.modality = self._inputs(schema, options)
        if self.label_column and not any(any(has_label(v) for v in values) for values in self._labels_only()):
            raise all_empty_labels(self.label_column, self.name)
        self.has_labels = self.label_column is not None

    def _label(self, options: ReaderOptions) -> str | None:
        label = pick_column(self.columns, options.label_column, LABEL_DEFAULTS, "label", self.name, "--label-column")
        self.named_label = label  # never taken for the input, even when labels are ignored
        if options.labelled is False:
            return None
        if options.labelled and label is None:
            raise SchemaError(f"no label column in {self.name}; columns present: {', '.join(self.columns)}",
                              hint=f"pass --label-column (defaults tried: {', '.join(LABEL_DEFAULTS)})")
        return label

    def _inputs(self, schema: Any, options: ReaderOptions) -> tuple[list[str], str]:
        import pyarrow.types as pt

        def kind(name: str) -> str | None:
            t = schema.field(name).type
            if pt.is_string(t) or pt.is_large_string(t) or pt.is_binary(t) or pt.is_large_binary(t):
                return "text"
            if (pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t)) and _numeric(t.value_type):
                return "array"
            return "scalar" if _numeric(t) else None

        text = pick_column(self.columns, options.text_column, TEXT_DEFAULTS, "text", self.name, "--text-column")
        rest = [c for c in self.columns if c != self.named_label]
        if text is None and len(rest) == 1:
            text = rest[0]
        if text is not None:
            k = kind(text)
            if k is None:
                raise SchemaError(f"column '{text}' of {self.name} has type {schema.field(text).type}; need a "
                                  "string, binary, numeric list or numeric column", hint="pass --text-column")
            return [text], ("text" if k == "text" else "numeric")
        if rest and all(kind(c) == "scalar" for c in rest):
            return rest, "numeric"
        raise SchemaError(f"no text column in {self.name}; columns present: "
                          + ", ".join(f"{c} ({schema.field(c).type})" for c in self.columns),
                          hint=f"pass --text-column (defaults tried: {', '.join(TEXT_DEFAULTS)})")

    def _batches(self, columns: list[str], row_groups: list[int] | None = None,
                 batch_rows: int = BATCH_ROWS) -> Iterator[Any]:
        """Record batches of ``columns``, one row group at a time: pyarrow's ``iter_batches`` over many row
        groups keeps memory that grows with the file (~70 B a row measured at 1M and 2M rows), per group not."""
        groups = range(self.file.metadata.num_row_groups) if row_groups is None else row_groups
        for group in groups:
            yield from self.file.iter_batches(batch_size=batch_rows, row_groups=[group],
                                              columns=list(dict.fromkeys(columns)))

    def _labels_only(self) -> Iterator[list[Any]]:
        for batch in self._batches([self.label_column]):
            yield batch.column(self.label_column).to_pylist()

    def __iter__(self) -> Iterator[Item]:
        return self._items(self._batches(self._read_columns()), 0)

    def splits(self, rows: int) -> list[dict[str, Any]]:
        """Runs of whole row groups of at least ``rows`` rows each (the last fewer), for readers in other
        processes (:meth:`read_split`); from the footer alone."""
        meta = self.file.metadata
        out: list[dict[str, Any]] = []
        first = 0
        part: dict[str, Any] | None = None
        for g in range(meta.num_row_groups):
            if part is None:
                part = {"row_groups": [], "first": first, "rows": 0}
            part["row_groups"].append(g)
            n = meta.row_group(g).num_rows
            part["rows"] += n
            first += n
            if part["rows"] >= rows:
                out.append(part)
                part = None
        if part is not None and part["rows"]:
            out.append(part)
        return out

    def read_split(self, split: dict[str, Any]) -> Iterator[Item]:
        """The items of one part from :meth:`splits` (refs number rows as in the whole file)."""
        return self._items(self._batches(self._read_columns(), split["row_groups"]), split["first"])

    def batches(self, size: int) -> Iterator[ItemBatch]:
        """The items in batches of at most ``size`` rows (a row group's last batch is shorter), each row's key
        computed with the batch's (:func:`row_keys` / :func:`text_keys`: the keys ``__iter__`` gives)."""
        return self._item_batches(self._batches(self._read_columns(), batch_rows=size), 0)

    def read_split_batches(self, split: dict[str, Any], size: int) -> Iterator[ItemBatch]:
        """:meth:`read_split` in batches (see :meth:`batches`)."""
        return self._item_batches(self._batches(self._read_columns(), split["row_groups"], size), split["first"])

    def _item_batches(self, batches: Iterator[Any], row: int) -> Iterator[ItemBatch]:
        self.stats = stats = new_stats()
        for batch in batches:
            n = batch.num_rows
            refs = RowRefs(self.name, row + 1, n)
            out = self._fast_batch(batch, refs)
            if out is None:  # a column kind without a batch path: item by item (the same keys)
                items = [self._item(refs[i], value, label, stats)
                         for i, (value, label) in enumerate(zip(self._values(batch), self._raw_labels(batch)))]
                out = ItemBatch.of(items, self.modality)
                out.refs = refs
            stats["items"] += n
            stats["failed"] += len(out.errors)
            row += n
            yield out

    def _raw_labels(self, batch: Any) -> list[Any]:
        return batch.column(self.label_column).to_pylist() if self.label_column else [None] * batch.num_rows

    def _fast_batch(self, batch: Any, refs: RowRefs) -> ItemBatch | None:
        """The batch from Arrow buffers (no Python object per row for numeric inputs), or None when its
        columns need the row-by-row path (binary text, variable-length lists, nulls inside a list)."""
        import numpy as np
        import pyarrow.types as pt

        n = batch.num_rows
        labels = self._batch_labels(batch)
        if labels is None:
            return None
        if self.modality == "text":
            col = batch.column(self.inputs[0])
            if not (pt.is_string(col.type) or pt.is_large_string(col.type)):
                return None
            payloads = col.to_pylist()
            keys = text_keys(["" if v is None else v for v in payloads])
        elif len(self.inputs) == 1:
            col = batch.column(self.inputs[0])
            width = getattr(col.type, "list_size", None)
            if width is None or not pt.is_fixed_size_list(col.type) or pt.is_boolean(col.type.value_type):
                return None
            values = col.values.slice(col.offset * width, n * width)
            if values.null_count:
                return None
            payloads = _as_numpy(values).reshape(n, width)
            keys = row_keys(payloads)
        else:
            cols = [batch.column(c) for c in self.inputs]
            payloads = np.column_stack([c.to_numpy(zero_copy_only=False) for c in cols])
            keys = row_keys(payloads)
        errors = {i: f"{refs[i]}: '{'/'.join(self.inputs)}' is null" for i in self._null_rows(batch)}
        for i in errors:
            keys[i] = failed_key(refs[i])
        return ItemBatch(self.modality, keys, payloads, refs, labels, errors)

    def _null_rows(self, batch: Any) -> list[int]:
        import numpy as np

        valid = np.ones(batch.num_rows, dtype=bool)
        for name in self.inputs:
            col = batch.column(name)
            if col.null_count:
                valid &= ~np.asarray(col.is_null())
        return np.flatnonzero(~valid).tolist()

    def _batch_labels(self, batch: Any) -> Any:
        """The label of each row, :func:`read_label` once per distinct value; None when a value is refused
        (then the row-by-row path names each bad row)."""
        import numpy as np
        import pyarrow.types as pt

        if not self.label_column:
            return [None] * batch.num_rows
        col = batch.column(self.label_column)
        if pt.is_nested(col.type) or pt.is_dictionary(col.type):
            return None
        encoded = col.dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        read = [read_label(v, self.label_column, "") for v in distinct] + [(None, None)]
        if any(bad is not None for _, bad in read):
            return None
        indices = encoded.indices
        if indices.null_count:
            index = np.asarray([len(distinct) if v is None else v for v in indices.to_pylist()], np.int64)
        else:
            index = _as_numpy(indices)
        return np.asarray([label for label, _ in read], dtype=object)[index]

    def _read_columns(self) -> list[str]:
        return self.inputs + ([self.label_column] if self.label_column else [])

    def _items(self, batches: Iterator[Any], row: int) -> Iterator[Item]:
        self.stats = stats = new_stats()
        for batch in batches:
            labels = batch.column(self.label_column).to_pylist() if self.label_column else [None] * batch.num_rows
            values = self._values(batch)
            for value, label in zip(values, labels):
                row += 1
                item = self._item(f"{self.name}:row {row}", value, label, stats)
                stats["items"] += 1
                stats["failed"] += item.error is not None
                yield item

    def _values(self, batch: Any) -> list[Any]:
        import numpy as np

        if self.modality == "text" or len(self.inputs) == 1:
            col = batch.column(self.inputs[0])
            if self.modality == "text":
                return col.to_pylist()
            return [None if v is None else np.asarray(v) for v in col.to_numpy(zero_copy_only=False)]
        cols = [batch.column(c) for c in self.inputs]
        valid = np.ones(batch.num_rows, dtype=bool)
        for c in cols:
            if c.null_count:
                valid &= ~np.asarray(c.is_null())
        matrix = np.column_stack([c.to_numpy(zero_copy_only=False) for c in cols])
        return [matrix[i].copy() if valid[i] else None for i in range(batch.num_rows)]

    def _item(self, ref: str, value: Any, raw_label: Any, stats: dict[str, int]) -> Item:
        label, bad = read_label(raw_label, self.label_column, ref) if self.label_column else (None, None)
        if bad is not None:
            return Item.failed(ref, bad, self.modality)
        if value is None:
            return Item.failed(ref, f"{ref}: '{'/'.join(self.inputs)}' is null", self.modality, label=label)
        if self.modality == "numeric":
            return Item.make(ref, value, "numeric", label=label)
        if isinstance(value, bytes):
            try:
                value, replaced = decode(value, self.options.encoding_errors)
            except UnicodeDecodeError as exc:
                return Item.failed(ref, bad_utf8(exc, ref), "text", raw=exc.object, label=label)
            stats["replaced"] += replaced
        return Item.make(ref, value, "text", label=label)

    def estimate_count(self) -> int | None:
        return int(self.file.metadata.num_rows)


def _as_numpy(values: Any) -> Any:
    """A primitive Arrow array without nulls as a numpy view of its buffer (``to_numpy`` would import pandas,
    half a second, for the first call of a process)."""
    import numpy as np
    import pyarrow.types as pt

    t = values.type
    if values.null_count or not (pt.is_integer(t) or pt.is_floating(t)):
        return values.to_numpy(zero_copy_only=False)
    dtype = np.dtype(t.to_pandas_dtype())
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize)


def _numeric(t: Any) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t)


def open_parquet(source: str, options: ReaderOptions) -> ParquetSource:
    if options.events is not None:  # --group-by: the table is events, read as sequences
        from .events import open_events

        return open_events(source, options)
    return ParquetSource(os.fspath(source), options)
