"""Plain text reader: one item per line (LF or CRLF), a UTF-8 BOM stripped, no labels.

Every line is an item, blank ones included (an empty text is embedded like any other),
so ``file.txt:line N`` is always the N-th line. A final newline does not add an item.
"""

from __future__ import annotations

import os
from typing import Iterator

from headstart.sdk import Item, ReaderOptions

from ._common import (bad_utf8, count_lines, decode, display_path, line_splits, new_stats, read_line_range,
                      read_lines, strip_eol)


class TextFileSource:
    """An opened text file."""

    modality = "text"
    has_labels = False

    def __init__(self, path: str, options: ReaderOptions) -> None:
        self.path, self.options = path, options
        self.name = display_path(path)
        self.stats = new_stats()
        with open(path, "rb"):
            pass

    def __iter__(self) -> Iterator[Item]:
        return self._items(read_lines(self.path), 1)

    def splits(self, rows: int) -> list[dict[str, int]]:
        """Parts of ``rows`` lines each, for readers in other processes (:meth:`read_split`)."""
        return line_splits(self.path, rows)

    def read_split(self, split: dict[str, int]) -> Iterator[Item]:
        """The items of one part from :meth:`splits` (refs number lines as in the whole file)."""
        return self._items(read_line_range(self.path, split["start"], split["end"]), split["line"])

    def _items(self, lines: Iterator[bytes], first: int) -> Iterator[Item]:
        self.stats = stats = new_stats()
        for n, raw in enumerate(lines, start=first):
            ref = f"{self.name}:line {n}"
            raw = strip_eol(raw)
            try:
                text, replaced = decode(raw, self.options.encoding_errors)
                item = Item.make(ref, text, "text")
                stats["replaced"] += replaced
            except UnicodeDecodeError as exc:
                item = Item.failed(ref, bad_utf8(exc, ref), "text", raw=raw)
            stats["items"] += 1
            stats["failed"] += item.error is not None
            yield item

    def estimate_count(self) -> int | None:
        return count_lines(self.path)


def open_text(source: str, options: ReaderOptions) -> TextFileSource:
    return TextFileSource(os.fspath(source), options)
