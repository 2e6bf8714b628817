"""Shard files: uncompressed Arrow IPC (Feather v2), memory-mappable, readable without headstart.

A *vector shard* has columns ``key`` (string), ``ref`` (string, nullable) and ``vector``
(fixed-size list of float32, ``dim`` wide). An *error shard* has ``key``, ``ref``,
``reason`` and ``stage`` (strings). ``pyarrow.feather.read_table(path)`` reads either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import StoreError
from .atomic import write_bytes_atomic

VECTORS = "vectors"
ERRORS = "errors"


def vector_table(keys: Sequence[str], refs: Sequence[str | None], vectors: np.ndarray):
    """A vector shard as a ``pyarrow.Table``."""
    import pyarrow as pa

    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.table({
        "key": pa.array(list(keys), type=pa.string()),
        "ref": pa.array(list(refs), type=pa.string()),
        "vector": column,
    })


def error_table(keys: Sequence[str], refs: Sequence[str | None], reasons: Sequence[str], stages: Sequence[str]):
    """An error shard as a ``pyarrow.Table``."""
    import pyarrow as pa

    return pa.table({
        "key": pa.array(list(keys), type=pa.string()),
        "ref": pa.array(list(refs), type=pa.string()),
        "reason": pa.array(list(reasons), type=pa.string()),
        "stage": pa.array(list(stages), type=pa.string()),
    })


def table_bytes(table) -> memoryview:
    """Serialise ``table`` as one uncompressed Arrow IPC file, in memory."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return memoryview(sink.getvalue())


def write_shard_file(store_path: Path, kind: str, table, *, prefix: str) -> dict:
    """Write ``table`` as a new, immutable shard file of the store at ``store_path`` (atomic, fsync'ed).

    The file is invisible to readers until a writer commits the returned manifest entry
    (:meth:`StoreWriter.commit_shard_entries`); anyone who can see the store directory may call this
    (a local writer, or a Ray worker on a shared filesystem). ``prefix`` makes names unique per writer.
    """
    import secrets

    name = f"shards/{prefix}-{secrets.token_hex(6)}.{kind}.arrow"
    data = table_bytes(table)
    path = Path(store_path) / name
    digest = write_bytes_atomic(path, data)
    # the mtime lets look-ups trust the file without hashing it while it stays untouched (see integrity.stat_matches)
    return {"file": name, "kind": kind, "rows": int(table.num_rows), "bytes": len(data), "sha256": digest,
            "mtime_ns": path.stat().st_mtime_ns}


def read_table(path: Path, columns: Sequence[str] | None = None):
    """Read a shard memory-mapped (zero copy); ``columns`` limits what is materialised.

    A missing or unreadable shard raises :class:`StoreError` naming it.
    """
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path), "r")
        table = pa.ipc.open_file(source).read_all()
        return table.select(list(columns)) if columns is not None else table
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise StoreError(f"feature store shard {path} cannot be read: {exc}",
                         hint="run `headstart cache verify`; a damaged store must be re-embedded "
                              "(move it aside, then re-run `headstart embed`)") from None


def num_rows(path: Path) -> int:
    """Row count from the file footer, without reading the data."""
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_file(source)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def vectors_of(table, dim: int) -> np.ndarray:
    """The ``vector`` column as an (n, dim) float32 array, zero-copy where the data is contiguous."""
    column = table.column("vector")
    parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    flat = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else np.empty(0, np.float32))
    return flat.reshape(-1, dim)
