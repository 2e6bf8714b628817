"""CSV / TSV reader: one item per data row, streamed with the csv module.

A UTF-8 BOM is stripped, CRLF and LF both work, quoted fields may span lines. Text is
kept verbatim (empty text is an item; NUL, RTL marks and ZWJ sequences pass through).
Bytes that are not UTF-8 make that row a failed item (strict) or are replaced and
counted in ``stats["replaced"]`` (``encoding_errors="replace"``).
"""

from __future__ import annotations

import csv
import os
from typing import Iterator

from headstart.sdk import Item, ReaderOptions, SchemaError

from ._common import (BOM, all_empty_labels, bad_utf8, choose_columns, count_lines, display_path, new_stats,
                      read_label, read_line_range, read_lines)

#: Largest field accepted (characters); the csv module's default (128 KiB) would reject 1 MB texts.
FIELD_LIMIT = 64 << 20


class CsvSource:
    """An opened CSV/TSV file; the schema is checked in ``__init__``."""

    modality = "text"

    def __init__(self, path: str, options: ReaderOptions) -> None:
        self.path, self.options = path, options
        self.delimiter = options.extra.get("delimiter") or ("\t" if path.lower().endswith((".tsv", ".tab")) else ",")
        self.name = display_path(path)
        self.stats = new_stats()
        if csv.field_size_limit() < FIELD_LIMIT:
            csv.field_size_limit(FIELD_LIMIT)
        rows = self._rows()
        header = next(rows, None)
        if header is None:
            raise SchemaError(f"{self.name} is empty: no header row", hint="add a header row naming the columns")
        self.columns = [c.encode("utf-8", "surrogateescape").decode("utf-8", "replace").strip() for c in header[1]]
        self.text_column, self.label_column = choose_columns(
            self.columns, options.text_column, options.label_column, options.labelled, self.name)
        self._ti = self.columns.index(self.text_column)
        self._li = self.columns.index(self.label_column) if self.label_column else None
        if self._li is not None and not any(_label(r, self._li) for _, r in rows):
            raise all_empty_labels(self.label_column, self.name)
        self.has_labels = self._li is not None

    def _rows(self, raw_lines: Iterator[bytes] | None = None, first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
        """(physical line number where the row starts, fields) for each non-blank row (the file's: header first)."""
        lines = (raw.decode("utf-8", "surrogateescape") for raw in (raw_lines or read_lines(self.path)))
        reader = csv.reader(lines, delimiter=self.delimiter)
        start = first_line
        for fields in reader:
            if fields:
                yield start, fields
            start = first_line + reader.line_num

    def __iter__(self) -> Iterator[Item]:
        rows = self._rows()
        next(rows, None)
        return self._items(rows, 1)

    def splits(self, rows: int) -> list[dict[str, int]]:
        """Parts of ``rows`` data rows each, for readers in other processes (:meth:`read_split`): byte ranges
        that start at a row start, found by one parsing pass (quoted fields may span lines). Holds one small
        dict per part, never the rows."""
        consumed = [0]

        def counted() -> Iterator[bytes]:
            for raw in read_lines(self.path):
                consumed[0] += len(raw)
                yield raw

        bom = 0
        with open(self.path, "rb") as fh:
            bom = len(BOM) if fh.read(len(BOM)) == BOM else 0
        lines = (raw.decode("utf-8", "surrogateescape") for raw in counted())
        reader = csv.reader(lines, delimiter=self.delimiter)
        out: list[dict[str, int]] = []
        part: dict[str, int] | None = None
        header_seen, row = False, 0
        for fields in reader:
            if not fields:
                continue
            if not header_seen:
                header_seen = True
            else:
                row += 1
                if row % rows == 0 and part is not None:
                    part["end"] = consumed[0] + bom
                    out.append(part)
                    part = None
            if part is None:
                part = {"start": consumed[0] + bom, "end": -1, "line": reader.line_num + 1, "row": row + 1}
        if part is not None and row + 1 > part["row"]:
            part["end"] = consumed[0] + bom
            out.append(part)
        return out

    def read_split(self, split: dict[str, int]) -> Iterator[Item]:
        """The items of one part from :meth:`splits` (refs number rows and lines as in the whole file)."""
        lines = read_line_range(self.path, split["start"], split["end"])
        return self._items(self._rows(lines, split["line"]), split["row"])

    def _items(self, rows: Iterator[tuple[int, list[str]]], first: int) -> Iterator[Item]:
        self.stats = stats = new_stats()
        for n, (line, fields) in enumerate(rows, start=first):
            ref = f"{self.name}:row {n}"
            item = self._item(ref, line, fields, stats)
            stats["items"] += 1
            stats["failed"] += item.error is not None
            yield item

    def _item(self, ref: str, line: int, fields: list[str], stats: dict[str, int]) -> Item:
        label = _label(fields, self._li) if self._li is not None else None
        if self._ti >= len(fields):
            return Item.failed(ref, f"{ref} (line {line}): has {len(fields)} fields, the header has "
                               f"{len(self.columns)}; no '{self.text_column}' value", "text", label=label)
        raw = fields[self._ti].encode("utf-8", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if self.options.encoding_errors == "strict":
                return Item.failed(ref, bad_utf8(exc, f"{ref} (line {line})"), "text", raw=raw, label=label)
            text = raw.decode("utf-8", "replace")
            stats["replaced"] += 1
        return Item.make(ref, text, "text", label=label)

    def estimate_count(self) -> int | None:
        return max(count_lines(self.path) - 1, 0)


def _label(fields: list[str], index: int) -> str | None:
    if index >= len(fields):
        return None
    return read_label(fields[index].encode("utf-8", "surrogateescape"), "", "")[0]


def open_csv(source: str, options: ReaderOptions) -> CsvSource:
    if options.events is not None:  # --group-by: the table is events, read as sequences
        from .events import open_events

        return open_events(source, options)
    return CsvSource(os.fspath(source), options)
