"""Check a store: manifest ↔ shards (size, sha256, rows, schema) ↔ index."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import index as ix
from . import shards as sh
from .atomic import TMP_MARK, sha256_file

if TYPE_CHECKING:
    from .features import FeatureStore, VerifyReport


def verify_store(store: "FeatureStore", deep: bool = True) -> "VerifyReport":
    """Every problem found (``deep`` also hashes files and probes the index)."""
    from .features import VerifyReport

    report = VerifyReport(str(store.path))
    m = store.manifest
    counts = {sh.VECTORS: 0, sh.ERRORS: 0}
    shards_ok = True
    for entry in m["shards"]:
        path = store.path / entry["file"]
        if not path.is_file():
            report.problems.append(f"shard {entry['file']} is missing")
            shards_ok = False
            continue
        counts[entry["kind"]] += entry["rows"]
        if path.stat().st_size != entry["bytes"]:
            report.problems.append(f"shard {entry['file']} has {path.stat().st_size} bytes, manifest says {entry['bytes']}")
            shards_ok = False
            continue
        if deep and sha256_file(path) != entry["sha256"]:
            report.problems.append(f"shard {entry['file']} does not match its sha256 (damaged or edited)")
            shards_ok = False
            continue
        try:
            rows = sh.num_rows(path)
            table = sh.read_table(path)
        except Exception as exc:  # pyarrow raises several types on damaged files
            report.problems.append(f"shard {entry['file']} cannot be read: {exc}")
            shards_ok = False
            continue
        if rows != entry["rows"]:
            report.problems.append(f"shard {entry['file']} has {rows} rows, manifest says {entry['rows']}")
            shards_ok = False
        if entry["kind"] == sh.VECTORS and table.schema.field("vector").type.list_size != store.dim:
            report.problems.append(f"shard {entry['file']} holds vectors of another dimension")
            shards_ok = False
    if counts[sh.VECTORS] != m["n_vectors"]:
        report.problems.append(f"shards hold {counts[sh.VECTORS]} vectors, manifest says {m['n_vectors']}")
    if counts[sh.ERRORS] != m["n_errors"]:
        report.problems.append(f"shards hold {counts[sh.ERRORS]} error records, manifest says {m['n_errors']}")
    if shards_ok:
        store._reset_caches()
        keys = store.keys()
        if len(set(keys)) != len(keys):
            report.problems.append(f"{len(keys) - len(set(keys))} key(s) are stored twice")
        _verify_index(store, report, deep)
    stray = [p.name for p in store.path.rglob(f".*{TMP_MARK}*")]
    if stray:
        report.notes.append(f"{len(stray)} temp file(s) left by an interrupted writer (removed by the next writer or gc)")
    return report


def _verify_index(store: "FeatureStore", report: "VerifyReport", deep: bool) -> None:
    entry = store.manifest.get("index")
    if not entry:
        if len(store):
            report.notes.append("no index yet: searches scan the shards exactly until the next write")
        return
    path = store.path / entry["file"]
    if not path.is_file():
        report.problems.append(f"index file {entry['file']} is missing (run `store.rebuild_index()`)")
        return
    if deep and sha256_file(path) != entry["sha256"]:
        report.problems.append(f"index file {entry['file']} does not match its sha256 (rebuild the index)")
        return
    if entry["type"] == ix.IVF and not (store.path / entry["ivfdata"]).is_file():
        report.problems.append(f"index data {entry['ivfdata']} is missing (rebuild the index)")
        return
    if entry["n_vectors"] > len(store):
        report.problems.append(f"index covers {entry['n_vectors']} vectors, the store has {len(store)}")
        return
    if entry["n_vectors"] < len(store):
        report.notes.append(f"index covers {entry['n_vectors']} of {len(store)} vectors; the rest are scanned exactly")
    if not deep:
        return
    try:
        index = ix.load(path, entry["type"], store.index_config.nprobe)
    except RuntimeError as exc:
        report.problems.append(f"index file {entry['file']} cannot be loaded: {exc}")
        return
    if index.ntotal != entry["n_vectors"]:
        report.problems.append(f"index holds {index.ntotal} vectors, manifest says {entry['n_vectors']}")
        return
    if index.ntotal:
        probe = np.unique(np.array([0, index.ntotal // 2, index.ntotal - 1], dtype=np.int64))
        rows = store._rows(probe)
        scores, _ = index.search(rows, 1)
        own = np.einsum("ij,ij->i", rows, rows)
        if (scores[:, 0] < own - 1e-3 * np.maximum(1.0, np.abs(own))).any():
            report.problems.append("index does not match the shards (probe vectors not found); rebuild the index")
