"""Key → row look-ups of one store snapshot, without a table of every key in memory.

Two :class:`~.keyindex.KeyIndex` instances per store, derived data like the FAISS index (the manifest stays
the truth; both are rebuildable from the shards' ``key`` columns)::

    keys/<epoch>/          16-byte key digest -> global row id of a vector (shards in manifest order)
    error-keys/<epoch>/    16-byte key digest -> global row of an error record (error shards in order)

``<epoch>`` is the manifest's ``key_index`` field. Within an epoch shards are only appended, so a row id
never changes meaning; dropping shards (damage) starts a new epoch, indexed afresh. Each index commit
records in its ``meta`` how many shards of its kind it covers (``{"shards": P, "rows": R}``).

A snapshot answers from the index for the shards it covers, plus an in-memory sorted table of the
digests of the shards it does not cover yet (the *tail*: shards a killed writer committed to the manifest
but not to the index, or a whole store written before the index existed): 24 bytes per tail key. Row ids
at or past the snapshot's own count (later commits) count as absent. A writer (under the lock) indexes the
tail first (:func:`sync`), in commits of :data:`SYNC_COMMIT_KEYS` keys, so a migration's memory is that of
one commit.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .keyindex import DIGEST, KeyIndex, digests

VECTOR_KEYS = "keys"
ERROR_KEYS = "error-keys"
SYNC_COMMIT_KEYS = 1 << 20


def new_epoch() -> str:
    return secrets.token_hex(6)


def _starts(entries: Sequence[dict]) -> np.ndarray:
    return np.cumsum([0] + [int(e["rows"]) for e in entries], dtype=np.int64)


class KindLookup:
    """Look-ups of one kind of shard (vectors or error records) for one snapshot's ``entries``."""

    def __init__(self, root: Path, folder: str, epoch: str | None, entries: list[dict],
                 read_keys: Callable[[dict], list[str]], indexes: dict[Path, KeyIndex] | None = None) -> None:
        self.entries = entries
        self.starts = _starts(entries)
        path = Path(root) / folder / epoch if epoch else None
        self.index = open_index(path, indexes) if path is not None and (path / "log").is_file() else None
        covered = int((self.index.meta if self.index else {}).get("shards", 0))
        self.covered = min(covered, len(entries))
        self._read_keys = read_keys
        self._tail: tuple[np.ndarray, np.ndarray] | None = None
        self.sizes_ok: bool | None = None  # set by the store: every shard has its recorded size

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row (global, in manifest order) of each digest, -1 where absent."""
        out = self.index.lookup(keys) if self.index is not None else np.full(len(keys), -1, np.int64)
        out[out >= self.rows] = -1  # committed after this snapshot
        if self.covered < len(self.entries):
            missing = np.flatnonzero(out < 0)
            if len(missing):
                tail_keys, tail_vals = self._tail_table()
                probe = keys[missing]
                at = np.minimum(np.searchsorted(tail_keys, probe), max(len(tail_keys) - 1, 0))
                hit = (tail_keys[at] == probe) if len(tail_keys) else np.zeros(len(probe), bool)
                out[missing[hit]] = tail_vals[at[hit]]
        return out

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        """Position in ``entries`` of the shard holding each row."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def _tail_table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._tail is None:
            parts_k, parts_v = [], []
            for i in range(self.covered, len(self.entries)):
                parts_k.append(digests(self._read_keys(self.entries[i])))
                parts_v.append(np.arange(self.starts[i], self.starts[i + 1], dtype=np.int64))
            keys = np.concatenate(parts_k) if parts_k else np.empty(0, DIGEST)
            vals = np.concatenate(parts_v) if parts_v else np.empty(0, np.int64)
            order = np.argsort(keys, kind="stable")
            self._tail = (keys[order], vals[order])
        return self._tail

    def release(self) -> None:
        if self.index is not None:
            self.index.release()


def open_index(path: Path, indexes: dict[Path, KeyIndex] | None) -> KeyIndex:
    """The key index at ``path``: the one in ``indexes`` (a store object's, kept across its snapshots so that
    its maps survive commits) brought up to date with its log, else a new one."""
    if indexes is None:
        return KeyIndex(path)
    index = indexes.get(path)
    if index is None:
        index = indexes[path] = KeyIndex(path)
    return index.refresh()


def sync(root: Path, folder: str, epoch: str, entries: list[dict], read_keys: Callable[[dict], list[str]],
         indexes: dict[Path, KeyIndex] | None = None) -> None:
    """Index every shard of ``entries`` the index of ``epoch`` does not cover yet (caller holds the write lock)."""
    index = open_index(Path(root) / folder / epoch, indexes)
    covered = int(index.meta.get("shards", 0))
    if covered > len(entries):  # cannot happen within an epoch under the lock; never trust such an index
        shutil.rmtree(index.folder, ignore_errors=True)
        index = KeyIndex(index.folder)
        if indexes is not None:
            indexes[index.folder] = index
        covered = 0
    starts = _starts(entries)
    parts_k: list[np.ndarray] = []
    parts_v: list[np.ndarray] = []
    pending = 0
    for i in range(covered, len(entries)):
        parts_k.append(digests(read_keys(entries[i])))
        parts_v.append(np.arange(starts[i], starts[i + 1], dtype=np.int64))
        pending += len(parts_k[-1])
        if pending >= SYNC_COMMIT_KEYS or i == len(entries) - 1:
            index.commit(np.concatenate(parts_k), np.concatenate(parts_v),
                         meta={"shards": i + 1, "rows": int(starts[i + 1])})
            parts_k, parts_v, pending = [], [], 0
    if indexes is None:
        index.release()


def remove_stale(root: Path, epoch: str | None) -> list[Path]:
    """Remove key indexes of other epochs and orphan segment files of this one (caller holds the lock)."""
    removed: list[Path] = []
    for folder in (VECTOR_KEYS, ERROR_KEYS):
        base = Path(root) / folder
        if not base.is_dir():
            continue
        for child in base.iterdir():
            if child.name != epoch:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
                removed.append(child)
            elif (child / "log").is_file():
                removed += [child / name for name in KeyIndex(child).remove_orphans()]
    return removed


__all__ = ["ERROR_KEYS", "KindLookup", "VECTOR_KEYS", "new_epoch", "remove_stale", "sync"]
