"""Event tables (CSV/TSV, JSON Lines, Parquet) as streams of Arrow record batches: never read whole.

Parquet is read row group by row group (``iter_batches`` without pre-buffering), CSV and JSONL block by block with pyarrow's
streaming readers (column types are inferred from the first block).
"""

from __future__ import annotations

from typing import Any, Iterator

from ..errors import ConfigError, ReaderError, SchemaError

BATCH_ROWS = 65_536
BLOCK_BYTES = 4 << 20
FORMATS = {".csv": "csv", ".tsv": "csv", ".tab": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".pq": "parquet"}


def table_format(path: str) -> str:
    for ext, fmt in FORMATS.items():
        if path.lower().endswith(ext):
            return fmt
    raise ConfigError(f"cannot read events from '{path}'", hint="events come from .csv/.tsv, .jsonl or .parquet files")


def _csv(path: str, columns: list[str] | None) -> Any:
    import pyarrow.csv as pc

    delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    return pc.open_csv(path, read_options=pc.ReadOptions(block_size=BLOCK_BYTES),
                       parse_options=pc.ParseOptions(delimiter=delimiter),
                       convert_options=pc.ConvertOptions(include_columns=columns, strings_can_be_null=True))


def _jsonl(path: str) -> Any:
    import pyarrow.json as pj

    return pj.open_json(path, read_options=pj.ReadOptions(block_size=BLOCK_BYTES))


def table_schema(path: str) -> Any:
    """The Arrow schema of the table (for CSV and JSONL: as inferred from its first block)."""
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).schema_arrow
        return (_csv(path, None) if fmt == "csv" else _jsonl(path)).schema
    except OSError as exc:
        raise ReaderError(f"cannot read {path}: {exc}", hint="check the path exists and is readable") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid on a malformed table
        raise SchemaError(f"{path} is not a readable {fmt} table: {exc}", hint="check the file was fully written") \
            from None


def record_batches(path: str, columns: list[str]) -> Iterator[Any]:
    """The table's ``columns``, batch by batch, in file order."""
    fmt = table_format(path)
    rows = 0
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # pre_buffer=False: pyarrow's default pre-buffers the column chunks of every row group it will read,
            # so memory grew with the file (383 MB peak for a 10M-event table against 139 MB without)
            for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                rows += batch.num_rows
                yield batch
            return
        reader = _csv(path, columns) if fmt == "csv" else _jsonl(path)
        for batch in reader:
            if fmt == "jsonl":
                batch = batch.select(columns)
            rows += batch.num_rows
            yield batch
    except (ReaderError, SchemaError):
        raise
    except Exception as exc:  # noqa: BLE001 - a later block whose values do not fit the inferred types
        raise ReaderError(f"{path}: cannot read the events after row {rows}: {exc}",
                          hint="every value of a column must have the same type (numbers stay numbers)") from None
