"""Check a store: manifest ↔ shards (size, sha256, rows, schema) ↔ index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import index as ix
from . import integrity
from . import shards as sh
from .atomic import TMP_MARK, sha256_file
from .keyindex import DIGEST, digests

if TYPE_CHECKING:
    from .features import FeatureStore


@dataclass
class VerifyReport:
    """What :func:`verify_store` (``FeatureStore.verify``) found; ``ok`` when ``problems`` is empty."""

    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "problems": self.problems, "notes": self.notes}


def verify_store(store: "FeatureStore", deep: bool = True) -> "VerifyReport":
    """Every problem found. Both modes check each shard's size, Arrow footer, rows, columns and vector
    width, and the index files' sizes; ``deep`` also hashes every file (sha256 against the manifest),
    checks every vector (finite; unit norm where the backbone normalises) and probes the index, where
    quick mode samples the invariants on a few rows per shard."""

    report = VerifyReport(str(store.path))
    m = store.manifest
    counts = {sh.VECTORS: 0, sh.ERRORS: 0}
    shards_ok = True
    for entry in m["shards"]:
        counts[entry["kind"]] += entry["rows"]
        problem = integrity.shard_problem(store.path, entry, store.dim, store.unit_norm, hash_file=deep,
                                          sample=None if deep else integrity.QUICK_SAMPLE, use_cache=False)
        if problem is not None:
            report.problems.append(f"shard {entry['file']} {problem}")
            shards_ok = False
    if counts[sh.VECTORS] != m["n_vectors"]:
        report.problems.append(f"shards hold {counts[sh.VECTORS]} vectors, manifest says {m['n_vectors']}")
    if counts[sh.ERRORS] != m["n_errors"]:
        report.problems.append(f"shards hold {counts[sh.ERRORS]} error records, manifest says {m['n_errors']}")
    if not shards_ok:
        report.notes.append("`headstart cache repair` drops the damaged shards; their items are embedded again "
                            "by the next `headstart embed`")
    if shards_ok:
        store.forget_reads()
        # 16-byte digests of every key (16 B per key, not a table of strings); the shards were just checked
        found = np.concatenate([digests(store.shard_keys(entry)) for entry, _ in store.vector_shards()]
                               or [np.empty(0, DIGEST)])
        found.sort()
        twice = int((found[1:] == found[:-1]).sum()) if len(found) else 0
        if twice:
            report.notes.append(f"{twice} key(s) are stored twice (two writers met the same content; both rows "
                                "hold the same vector and look-ups take one)")
        _verify_index(store, report, deep)
    stray = [p.name for p in store.path.rglob(f".*{TMP_MARK}*")]
    if stray:
        report.notes.append(f"{len(stray)} temp file(s) left by an interrupted writer (removed by the next writer or gc)")
    return report


def _verify_index(store: "FeatureStore", report: "VerifyReport", deep: bool) -> None:
    entry = store.manifest.get("index")
    if not entry:
        if len(store):
            report.notes.append("no index yet (`headstart embed` leaves it to the first search or "
                                "`headstart cache index`); searches scan the shards exactly until then")
        return
    rebuild = "the next search rebuilds it, or run `headstart cache index`"
    path = store.path / entry["file"]
    if not path.is_file():
        report.problems.append(f"index file {entry['file']} is missing; {rebuild}")
        return
    if path.stat().st_size != entry.get("bytes"):
        report.problems.append(f"index file {entry['file']} has {path.stat().st_size} bytes, the manifest says "
                               f"{entry.get('bytes')}; {rebuild}")
        return
    if deep and sha256_file(path) != entry["sha256"]:
        report.problems.append(f"index file {entry['file']} does not match its sha256; {rebuild}")
        return
    if entry["type"] == ix.IVF:
        data = store.path / entry["ivfdata"]
        if not data.is_file() or data.stat().st_size != entry.get("ivfdata_bytes", data.stat().st_size):
            report.problems.append(f"index data {entry['ivfdata']} is missing or has the wrong size; {rebuild}")
            return
        if deep and entry.get("ivfdata_sha256") and sha256_file(data) != entry["ivfdata_sha256"]:
            report.problems.append(f"index data {entry['ivfdata']} does not match its sha256; {rebuild}")
            return
    if entry["n_vectors"] > len(store):
        report.problems.append(f"index covers {entry['n_vectors']} vectors, the store has {len(store)}")
        return
    if entry["n_vectors"] < len(store):
        report.notes.append(f"index covers {entry['n_vectors']} of {len(store)} vectors (`headstart embed` leaves "
                            "the index to the first search or `headstart cache index`); the rest are scanned "
                            "exactly")
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
        rows = store.read_rows(probe)
        scores, _ = index.search(rows, 1)
        own = np.einsum("ij,ij->i", rows, rows)
        if (scores[:, 0] < own - 1e-3 * np.maximum(1.0, np.abs(own))).any():
            report.problems.append(f"index does not match the shards (probe vectors not found); {rebuild}")
