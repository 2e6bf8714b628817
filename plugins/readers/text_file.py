"""Plain text reader: one item per line (LF or CRLF), a UTF-8 BOM stripped, no labels.

Every line is an item, blank ones included (an empty text is embedded like any other),
so ``file.txt:line N`` is always the N-th line. A final newline does not add an item.
"""

from __future__ import annotations

import os
from typing import Iterator

from headstart.sdk import Item, ReaderOptions

from ._common import LineSource, bad_utf8, count_lines, decode, display_path, new_stats, strip_eol


class TextFileSource(LineSource):
    """An opened text file."""

    modality = "text"
    has_labels = False

    def __init__(self, path: str, options: ReaderOptions) -> None:
        self.path, self.options = path, options
        self.name = display_path(path)
        self.stats = new_stats()
        with open(path, "rb"):
            pass

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
