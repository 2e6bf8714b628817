"""The store manifest: a checkpoint (``manifest.json``) plus an append-only log of commits (``manifest.log``).

A directory without ``manifest.json`` does not exist. Shards listed here are the truth; every other file in
the store directory is derived (the FAISS index, the key index) or garbage (temp files, orphans).

* ``manifest.json``: the whole manifest at one generation, with a random ``checkpoint`` token; replaced
  atomically (temp file, fsync, rename, fsync dir).
* ``manifest.log``: one JSON line per later commit, ``{"base": <checkpoint token>, "generation": g,
  "add": [shard entries], "set": {field: value}}``, appended with one ``write`` and an fsync: the line is
  the commit point, so a commit of new shards writes one line, not the whole shard list.

A reader reads the checkpoint, then applies the log's lines of that checkpoint in generation order; a
torn last line (a writer killed mid-append) and lines of another checkpoint are ignored, so every reader
sees one consistent generation. The writer (under the store's lock) compacts the log into a new
checkpoint every :data:`LOG_COMPACT_LINES` lines, when it opens a store whose log is not empty (a killed
writer's, possibly torn) and when it closes: the new checkpoint is written first, then the log removed (a
log left behind names the old token and is ignored).

Version 1 stores (one ``manifest.json`` rewritten on every commit, no token) are read as they are and become
version 2 on their first write.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import StoreError
from .atomic import FS, fsync_dir, write_bytes_atomic

MANIFEST = "manifest.json"
LOG = "manifest.log"
FORMAT = "headstart.feature-store"
VERSION = 2
READABLE_VERSIONS = (1, 2)
#: log lines after which the writer folds the log into a new checkpoint
LOG_COMPACT_LINES = 1000


def new_manifest(fingerprint: str, dim: int, backbone: str, index_config: dict,
                 normalized: bool | None = None) -> dict[str, Any]:
    """A new store's manifest; ``normalized`` (the backbone L2-normalises) makes readers check unit norms."""
    now = time.time()
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "dim": int(dim),
        "backbone": backbone,
        "created_at": now,
        "updated_at": now,
        "generation": 0,
        "shards": [],
        "n_vectors": 0,
        "n_errors": 0,
        "index_config": index_config,
        "index": None,
        "normalized": normalized,
    }


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory`` (checkpoint + its log), or None when there is none (no store).

    ``"log_lines"`` in the result counts the log lines applied (not part of the stored manifest).
    """
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"feature store manifest {path} is not valid JSON ({exc})",
                         hint="restore it from a backup or delete the store directory and re-embed") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path} is not a headstart feature store manifest",
                         hint="point at a directory under <home>/features/")
    if data.get("version") not in READABLE_VERSIONS:
        raise StoreError(f"feature store {directory} has format version {data.get('version')}; "
                         f"this headstart reads versions {', '.join(map(str, READABLE_VERSIONS))}",
                         hint="upgrade headstart or re-embed")
    data["log_lines"] = 0
    token = data.get("checkpoint")
    if token:
        for record in _log_records(Path(directory)):
            if record.get("base") == token and record.get("generation") == data["generation"] + 1:
                _apply(data, record)
    return data


def _log_records(directory: Path) -> list[dict]:
    try:
        raw = (directory / LOG).read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for line in raw.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the torn tail of a killed append, or an empty line
        if isinstance(record, dict):
            records.append(record)
    return records


def _apply(data: dict[str, Any], record: dict) -> None:
    added = record.get("add", [])
    if added:
        data["shards"].extend(added)  # the caller's own copy of the list
        for entry in added:
            data["n_vectors" if entry["kind"] == "vectors" else "n_errors"] += int(entry["rows"])
    data.update(record.get("set", {}))
    data["generation"] = record["generation"]
    data["log_lines"] += 1


def write_manifest(directory: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Write ``data`` as a new checkpoint of ``directory`` (atomic replace; bumps the generation), then
    remove the log it folds in. The caller holds the write lock."""
    data = {k: v for k, v in data.items() if k != "log_lines"}
    data.update(generation=int(data.get("generation", 0)) + 1, updated_at=time.time(), version=VERSION,
                checkpoint=secrets.token_hex(8))
    write_bytes_atomic(Path(directory) / MANIFEST, (json.dumps(data, sort_keys=True) + "\n").encode())
    log = Path(directory) / LOG
    if log.exists():
        log.unlink()
        fsync_dir(directory)
    return dict(data, log_lines=0)


def append_commit(directory: Path, data: dict[str, Any], add: Sequence[dict] = (),
                  set_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Commit ``add`` (new shard entries) and ``set_fields`` on top of ``data`` (the current manifest) as one
    fsync'ed log line; return the new manifest. A version 1 manifest (no checkpoint) is rewritten as a
    checkpoint instead. The caller holds the write lock."""
    if not data.get("checkpoint") or data.get("log_lines", 0) >= LOG_COMPACT_LINES:
        new = dict(data, shards=data["shards"] + list(add), **(set_fields or {}))
        for entry in add:
            new["n_vectors" if entry["kind"] == "vectors" else "n_errors"] += int(entry["rows"])
        return write_manifest(directory, new)
    record = {"base": data["checkpoint"], "generation": int(data["generation"]) + 1, "add": list(add),
              "set": dict(set_fields or {}, updated_at=time.time())}
    path = Path(directory) / LOG
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        created = os.fstat(fd).st_size == 0
        written = FS.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path} ({written} of {len(line)} bytes)")
        FS.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(directory)
    new = dict(data, shards=list(data["shards"]), log_lines=int(data.get("log_lines", 0)))
    _apply(new, record)  # extends the copy
    return new


def log_needs_compaction(directory: Path, data: dict[str, Any]) -> bool:
    """Whether the log holds anything (lines of this checkpoint, or a killed writer's torn or stale lines)."""
    try:
        return (Path(directory) / LOG).stat().st_size > 0 or bool(data.get("log_lines"))
    except FileNotFoundError:
        return bool(data.get("log_lines"))
