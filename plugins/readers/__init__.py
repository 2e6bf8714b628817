"""Built-in source readers: image folders, CSV/TSV, JSONL, Parquet, plain text and ``.npy``.

Each reader lives in its own module; this module only registers them (cheap imports only:
pyarrow and numpy are imported when a source is opened).
"""

from __future__ import annotations

import os
from typing import Callable

from headstart.sdk import hookimpl, ReaderSpec

from .csv_reader import open_csv
from .folder import open_folder
from .jsonl import open_jsonl
from .npy import open_npy
from .parquet import open_parquet
from .text_file import open_text

SPECS = (
    ReaderSpec("folder", open_folder, "a folder of images; class sub-folders become labels",
               can_read=os.path.isdir, priority=0),
    ReaderSpec("csv", open_csv, "CSV/TSV with a header row (--text-column, --label-column)",
               extensions=(".csv", ".tsv", ".tab"), priority=10),
    ReaderSpec("jsonl", open_jsonl, "JSON Lines, one object per line (--text-column, --label-column)",
               extensions=(".jsonl", ".ndjson"), priority=10),
    ReaderSpec("parquet", open_parquet, "Parquet: a text column, or numeric list/scalar columns",
               extensions=(".parquet", ".pq"), priority=10),
    ReaderSpec("text", open_text, "plain text, one item per line", extensions=(".txt",),
               priority=5, aliases=("txt",)),
    ReaderSpec("npy", open_npy, "a numpy .npy array, one numeric item per row", extensions=(".npy",),
               priority=10),
)


@hookimpl
def register_readers(register: Callable[..., None]) -> None:
    for spec in SPECS:
        register(spec)
