"""JSON Lines reader: one object per line, one item per object, streamed line by line.

The columns are the keys of the first object. Blank lines are skipped (counted in
``stats["skipped"]``); a line that is not a JSON object, lacks the text field or holds a
non-string text becomes a failed item naming the line. Labels may be strings, numbers or
booleans (kept as their string form); ``null`` or ``""`` means unlabelled.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from headstart.sdk import Item, ReaderOptions, SchemaError

from ._common import (LineSource, all_empty_labels, bad_utf8, choose_columns, count_lines, decode, display_path,
                      has_label, new_stats, read_label, read_lines, strip_eol)


class JsonlSource(LineSource):
    """An opened JSONL file; the schema (keys of the first object) is checked in ``__init__``."""

    modality = "text"

    def __init__(self, path: str, options: ReaderOptions) -> None:
        self.path, self.options = path, options
        self.name = display_path(path)
        self.stats = new_stats()
        first = next((obj for _, obj in self._objects() if isinstance(obj, dict)), None)
        if first is None:
            raise SchemaError(f"{self.name} holds no JSON object", hint="write one JSON object per line")
        self.columns = list(first)
        self.text_column, self.label_column = choose_columns(
            self.columns, options.text_column, options.label_column, options.labelled, self.name)
        if self.label_column and not any(
                isinstance(o, dict) and has_label(o.get(self.label_column)) for _, o in self._objects()):
            raise all_empty_labels(self.label_column, self.name)
        self.has_labels = self.label_column is not None

    def _objects(self) -> Iterator[tuple[int, Any]]:
        """(line number, parsed value or the exception) for each non-blank line."""
        for n, raw in enumerate(read_lines(self.path), start=1):
            raw = strip_eol(raw)
            if not raw.strip():
                continue
            try:
                text, _ = decode(raw, "replace")
                yield n, json.loads(text)
            except ValueError as exc:
                yield n, exc

    def _items(self, lines: Iterator[bytes], first: int) -> Iterator[Item]:
        self.stats = stats = new_stats()
        for n, raw in enumerate(lines, start=first):
            raw = strip_eol(raw)
            if not raw.strip():
                stats["skipped"] += 1
                continue
            item = self._item(f"{self.name}:line {n}", raw, stats)
            stats["items"] += 1
            stats["failed"] += item.error is not None
            yield item

    def _item(self, ref: str, raw: bytes, stats: dict[str, int]) -> Item:
        try:
            line, replaced = decode(raw, self.options.encoding_errors)
        except UnicodeDecodeError as exc:
            return Item.failed(ref, bad_utf8(exc, ref), "text", raw=raw)
        try:
            obj = json.loads(line)
        except ValueError as exc:
            return Item.failed(ref, f"{ref}: invalid JSON ({exc})", "text", raw=raw)
        if not isinstance(obj, dict):
            return Item.failed(ref, f"{ref}: expected a JSON object, got {type(obj).__name__}", "text", raw=raw)
        label, bad = read_label(obj.get(self.label_column), self.label_column, ref) if self.label_column else (None, None)
        if bad is not None:
            return Item.failed(ref, bad, "text", raw=raw)
        text = obj.get(self.text_column)
        if not isinstance(text, str):
            what = "missing" if self.text_column not in obj else f"{type(text).__name__}, not a string"
            return Item.failed(ref, f"{ref}: field '{self.text_column}' is {what}", "text", raw=raw, label=label)
        stats["replaced"] += replaced
        return Item.make(ref, text, "text", label=label)

    def estimate_count(self) -> int | None:
        return count_lines(self.path)


def open_jsonl(source: str, options: ReaderOptions) -> JsonlSource:
    if options.events is not None:  # --group-by: the table is events, read as sequences
        from .events import open_events

        return open_events(source, options)
    return JsonlSource(os.fspath(source), options)
