"""Integrity of what readers use: a shard or index file is checked against its manifest entry before use.

A shard is checked the first time a process reads it (keys, vectors or error records), then trusted for the
rest of the process (shard files are immutable: a new commit writes a new file):

* its size and sha256 match the manifest entry written at commit;
* vector shards: the Arrow footer's rows and vector width match, every value is finite, and every vector
  has unit L2 norm (or is all zero) when the manifest says the backbone normalises (``"normalized": true``).

An index file is checked the same way (size + sha256; an IVF's ``.ivfdata`` by size) before it is loaded.
Everything here is per shard, so memory never depends on the store's size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from . import shards as sh

#: benchmarks/bench_integrity.py sets this to False in a child process to measure what the checks cost.
CHECKS = True
#: |‖v‖ − 1| allowed for a normalising backbone (int8 and fp16 exports stay well inside it).
NORM_TOLERANCE = 1e-2
#: rows per shard whose invariants ``cache verify --quick`` samples.
QUICK_SAMPLE = 16

_intact: set[tuple[str, str, str]] = set()  # (store dir, file, sha256) found intact in this process
#: shard files hashed by this process (observed by tests: a warm re-run hashes none)
hashed_shards = 0


def _memory_view(path: Path):
    import pyarrow as pa

    return pa.memory_map(str(path), "r").read_buffer()


def _sha256(buffer: Any) -> str:
    return hashlib.sha256(memoryview(buffer)).hexdigest()


def size_problem(root: Path, entry: dict) -> str | None:
    """Whether shard ``entry`` is missing or has another size than its manifest entry (one ``stat``):
    the cheap check a store object makes of every shard before its first look-up."""
    if not CHECKS:
        return None
    try:
        size = (Path(root) / entry["file"]).stat().st_size
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if size != entry.get("bytes"):
        return f"has {size} bytes, the manifest says {entry.get('bytes')}"
    return None


def stat_matches(root: Path, entry: dict) -> bool:
    """Whether shard ``entry`` has the size and mtime recorded when it was written (``mtime_ns``; entries
    written before it was recorded never match): what lets a look-up trust a shard without hashing it."""
    if not CHECKS:
        return True
    recorded = entry.get("mtime_ns")
    if recorded is None:
        return False
    try:
        info = (Path(root) / entry["file"]).stat()
    except OSError:
        return False
    return info.st_size == entry.get("bytes") and info.st_mtime_ns == recorded


def vector_problem(vectors: np.ndarray, unit_norm: bool) -> str | None:
    """Why these stored vectors break the store's invariants (finite; unit norm), or None."""
    if not len(vectors):
        return None
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        return f"{int((~finite).sum())} vector(s) hold NaN or Inf (first at row {int(np.argmin(finite))})"
    if unit_norm:
        squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        off = (np.abs(np.sqrt(squared) - 1.0) > NORM_TOLERANCE) & (squared != 0.0)
        if off.any():
            first = int(np.argmax(off))
            return (f"{int(off.sum())} vector(s) are not unit length though the backbone normalises "
                    f"(row {first} has norm {np.sqrt(squared[first]):.6g})")
    return None


def shard_problem(root: Path, entry: dict, dim: int, unit_norm: bool, *, hash_file: bool = True,
                  sample: int | None = None, use_cache: bool = True) -> str | None:
    """Why the shard ``entry`` of the store at ``root`` cannot be trusted, or None when it is intact.

    ``hash_file=False`` skips the sha256 and ``sample=N`` checks the invariants of N spread rows only
    (``cache verify --quick``); an intact full check is remembered for the process, and ``use_cache=False``
    ignores what was remembered (``cache verify``, ``cache repair``).
    """
    if not CHECKS and use_cache:
        return None
    name = entry["file"]
    key = (str(root), name, str(entry.get("sha256")))
    if use_cache and key in _intact:
        return None
    path = Path(root) / name
    try:
        if not path.is_file():
            return "is missing"
        size = path.stat().st_size
        if size != entry.get("bytes"):
            return f"has {size} bytes, the manifest says {entry.get('bytes')}"
        buffer = _memory_view(path)
        if hash_file:
            global hashed_shards
            hashed_shards += 1
        if hash_file and _sha256(buffer) != entry.get("sha256"):
            return "does not match the sha256 recorded when it was written (damaged or edited)"
        problem = _content_problem(buffer, entry, dim, unit_norm, sample)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if problem is None and hash_file and sample is None:
        _intact.add(key)  # a full check: later reads in this process need not repeat it
    return problem


def _content_problem(buffer: Any, entry: dict, dim: int, unit_norm: bool, sample: int | None) -> str | None:
    import pyarrow as pa

    try:
        table = pa.ipc.open_file(buffer).read_all()
    except (pa.ArrowException, ValueError) as exc:
        return f"cannot be read as Arrow: {exc}"
    if table.num_rows != entry.get("rows"):
        return f"has {table.num_rows} rows, the manifest says {entry.get('rows')}"
    wanted = ("key", "ref", "vector") if entry["kind"] == sh.VECTORS else ("key", "ref", "reason", "stage")
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        return f"lacks column(s) {', '.join(missing)}"
    if entry["kind"] != sh.VECTORS:
        return None
    width = getattr(table.schema.field("vector").type, "list_size", None)
    if width != dim:
        return f"holds {width}-d vectors, the store is {dim}-d"
    vectors = sh.vectors_of(table, dim)
    if sample is not None and len(vectors) > sample:
        vectors = vectors[np.unique(np.linspace(0, len(vectors) - 1, sample).astype(np.int64))]
    return vector_problem(vectors, unit_norm)


def index_problem(root: Path, entry: dict) -> str | None:
    """Why the index files of manifest entry ``entry`` cannot be used (size, sha256), or None."""
    if not CHECKS:
        return None
    key = (str(root), entry["file"], str(entry.get("sha256")))
    if key in _intact:
        return None
    path = Path(root) / entry["file"]
    try:
        if not path.is_file():
            return f"index file {entry['file']} is missing"
        if path.stat().st_size != entry.get("bytes"):
            return f"index file {entry['file']} has {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        if _sha256(_memory_view(path)) != entry.get("sha256"):
            return f"index file {entry['file']} does not match the sha256 recorded when it was written"
        if entry.get("ivfdata"):
            data = Path(root) / entry["ivfdata"]
            if not data.is_file():
                return f"index data {entry['ivfdata']} is missing"
            if entry.get("ivfdata_bytes") is not None and data.stat().st_size != entry["ivfdata_bytes"]:
                return (f"index data {entry['ivfdata']} has {data.stat().st_size} bytes, "
                        f"the manifest says {entry['ivfdata_bytes']}")
    except OSError as exc:
        return f"index file {entry['file']} cannot be read: {exc.strerror or exc}"
    _intact.add(key)
    return None


def scores_match(index_scores: np.ndarray, exact_scores: np.ndarray) -> bool:
    """Whether scores an index returned equal the exact inner products of the same stored rows."""
    tolerance = 1e-3 * np.maximum(1.0, np.abs(exact_scores))
    return bool((np.abs(index_scores - exact_scores) <= tolerance).all())


def forget(root: Path, name: str) -> None:
    """Check ``name`` of the store at ``root`` again on its next use (``cache repair`` trusts nothing)."""
    for key in [k for k in _intact if k[0] == str(root) and k[1] == name]:
        _intact.discard(key)
