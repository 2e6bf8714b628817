"""Shared pieces of the built-in readers: column choice, UTF-8 decoding, line counting, stats."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Literal

from headstart.sdk import did_you_mean, SchemaError

#: Column names tried, case-insensitively and in this order, when no column is given.
TEXT_DEFAULTS = ("text", "sentence", "sentences", "content", "body", "document", "review", "input")
LABEL_DEFAULTS = ("label", "labels", "class", "target", "category", "y")
BOM = b"\xef\xbb\xbf"


def pick_column(columns: list[str], wanted: str | None, defaults: Iterable[str], role: str, where: str,
                option: str) -> str | None:
    """The column for ``role``: ``wanted`` if given (must exist), else the first default present, else ``None``."""
    if wanted is not None:
        if wanted in columns:
            return wanted
        guess = did_you_mean(wanted, columns)
        raise SchemaError(f"{role} column '{wanted}' not found in {where}; columns present: {_listing(columns)}"
                          + (f"; did you mean '{guess}'?" if guess else ""),
                          hint=f"pass {option} with one of the columns present")
    lowered = {c.lower(): c for c in reversed(columns)}
    return next((lowered[d] for d in defaults if d in lowered), None)


def choose_columns(columns: list[str], text_column: str | None, label_column: str | None,
                   labelled: bool | None, where: str) -> tuple[str, str | None]:
    """Resolve (input column, label column) by the documented defaults; :class:`SchemaError` lists the columns.

    The input column is ``text_column``, else a default name, else the only column that is not the label.
    """
    named_label = pick_column(columns, label_column, LABEL_DEFAULTS, "label", where, "--label-column")
    label = None if labelled is False else named_label
    if labelled and label is None:
        raise SchemaError(f"no label column in {where}; columns present: {_listing(columns)}",
                          hint=f"pass --label-column (defaults tried: {', '.join(LABEL_DEFAULTS)})")
    text = pick_column(columns, text_column, TEXT_DEFAULTS, "text", where, "--text-column")
    if text is None:  # a label column is never taken for the input, even when labels are ignored
        rest = [c for c in columns if c != named_label]
        if len(rest) != 1:
            raise SchemaError(f"no text column in {where}; columns present: {_listing(columns)}",
                              hint=f"pass --text-column (defaults tried: {', '.join(TEXT_DEFAULTS)})")
        text = rest[0]
    if text == label:
        raise SchemaError(f"column '{text}' of {where} cannot be both the text and the label column",
                          hint="pass --text-column and --label-column with different columns")
    return text, label


def all_empty_labels(label: str, where: str) -> SchemaError:
    return SchemaError(f"label column '{label}' of {where} is empty in every row",
                       hint="fill the labels or pass --label-column with the right column; `headstart predict` and "
                            "`headstart embed` ignore labels (Python: ReaderOptions(labelled=False))")


def read_label(value: Any, column: str, ref: str) -> tuple[str | None, str | None]:
    """The one label-value rule of every reader: ``(label, None)`` or ``(None, reason)`` for a bad value.

    ``None`` and blank text mean unlabelled; strings are stripped; numbers and booleans become their
    string form; bytes are decoded as UTF-8 (bad bytes replaced). A list, tuple, dict, set or array is
    refused with a reason naming ``ref`` and ``column`` (one label per item is supported).
    """
    if value is None:
        return None, None
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, (list, tuple, dict, set, frozenset)) or hasattr(value, "__array__"):
        kind = type(value).__name__
        return None, f"{ref}: label '{column}' is a {kind}; one label per item is supported"
    else:
        text = str(value)
    return text.strip() or None, None


def _listing(columns: list[str]) -> str:
    return ", ".join(repr(c) for c in columns) if columns else "none"


def decode(raw: bytes, errors: Literal["strict", "replace"]) -> tuple[str, bool]:
    """``raw`` as UTF-8: ``(text, replaced)``; strict raises :class:`UnicodeDecodeError`."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        if errors == "strict":
            raise
        return raw.decode("utf-8", "replace"), True


def bad_utf8(exc: UnicodeDecodeError, where: str) -> str:
    bad = exc.object[exc.start:exc.end]
    return (f"{where}: not valid UTF-8 (byte {bad[:4].hex()} at offset {exc.start}); "
            "re-encode the file as UTF-8, or pass --encoding-errors replace (encoding_errors='replace')")


def strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def read_lines(path: str) -> Iterator[bytes]:
    """Raw lines of ``path`` (line ends kept), with a UTF-8 BOM removed from the first; streams."""
    with open(path, "rb") as fh:
        first = True
        for line in fh:
            if first:
                first = False
                if line.startswith(BOM):
                    line = line[len(BOM):]
            yield line


def count_lines(path: str) -> int:
    """Number of lines in ``path`` (a last line without a newline counts), reading 1 MiB chunks."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def display_path(path: str) -> str:
    """``path`` made printable: undecodable file-name bytes shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def new_stats() -> dict[str, int]:
    """Counters a source exposes as ``source.stats``, reset at each iteration."""
    return {"items": 0, "failed": 0, "replaced": 0, "skipped": 0}


def has_label(value: Any) -> bool:
    """``value`` is not an empty label (a bad one counts: it fails its item instead)."""
    label, bad = read_label(value, "", "")
    return label is not None or bad is not None


# -- splits: parts of one file that separate processes read on their own (``source.splits`` / ``read_split``) --

SCAN_BLOCK = 1 << 20


def line_splits(path: str, rows: int) -> list[dict[str, int]]:
    """Byte ranges of ``path`` holding ``rows`` lines each (the last fewer): ``{"start", "end", "line"}``
    with ``line`` the 1-based number of the range's first line. One pass in 1 MiB blocks; the result holds
    one small dict per range, never the lines."""
    out: list[dict[str, int]] = []
    start, line, count, pos = 0, 1, 0, 0
    with open(path, "rb") as fh:
        while block := fh.read(SCAN_BLOCK):
            at = 0
            while True:
                nl = block.find(b"\n", at)
                if nl < 0:
                    break
                count += 1
                at = nl + 1
                if count == rows:
                    out.append({"start": start, "end": pos + at, "line": line})
                    start, line, count = pos + at, line + rows, 0
            pos += len(block)
    if pos > start:
        out.append({"start": start, "end": pos, "line": line})
    return out


def read_line_range(path: str, start: int, end: int) -> Iterator[bytes]:
    """Raw lines (line ends kept) of the byte range ``[start, end)`` of ``path``, which starts at a line start;
    a UTF-8 BOM is removed when the range starts the file (as :func:`read_lines` does)."""
    with open(path, "rb") as fh:
        fh.seek(start)
        pos = start
        for line in fh:
            if pos >= end:
                break
            if pos == 0 and line.startswith(BOM):
                yield line[len(BOM):]
            else:
                yield line
            pos += len(line)


class LineSource:
    """What a one-item-per-line reader shares: whole-file iteration and line-range splits, both through the
    reader's ``_items(lines, first_line_number)``."""

    path: str

    def _items(self, lines: Iterator[bytes], first: int) -> Iterator[Any]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self._items(read_lines(self.path), 1)

    def splits(self, rows: int) -> list[dict[str, int]]:
        """Parts of ``rows`` lines each, for readers in other processes (:meth:`read_split`)."""
        return line_splits(self.path, rows)

    def read_split(self, split: dict[str, int]) -> Iterator[Any]:
        """The items of one part from :meth:`splits` (refs number lines as in the whole file)."""
        return self._items(read_line_range(self.path, split["start"], split["end"]), split["line"])

