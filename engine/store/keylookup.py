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

**Reading in stored order.** A re-run of a job reads its source in the order it was first embedded, so the
keys of one look-up batch are (mostly) the keys of one or two shards, the ones after the shards the
previous batch hit. When a batch's hits were that close together, the next batch is first matched against
the digests of the shards that follow (:data:`PREDICTED_SHARDS`, read from their ``key`` column): one
shard read per batch instead of a search per key in every index segment, whatever the store's size. Only
keys not matched that way go to the index; a row the index marks as shadowed (its key also has a smaller
row: a key stored twice) is never answered from a shard, so the answer stays the index's (the smallest
row). Keys read in any other order cost nothing extra: no batch is predicted until one shows locality.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import StoreError
from .keyindex import DIGEST, KeyIndex, digests

VECTOR_KEYS = "keys"
ERROR_KEYS = "error-keys"
SYNC_COMMIT_KEYS = 1 << 20
#: shards read ahead of the last hit when look-ups arrive in stored order (a batch may straddle two)
PREDICTED_SHARDS = 2


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
        self._next: int | None = None  # the shard the next batch's keys are expected to start in (stored order)
        self._shard_digests: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # shard -> its sorted digests, rows
        #: keys asked, keys answered from predicted shards, shards read for that
        self.stats = {"keys": 0, "predicted": 0, "shards_read": 0}

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row (global, in manifest order) of each digest, -1 where absent."""
        out = np.full(len(keys), -1, np.int64)
        self.stats["keys"] += len(keys)
        if self._next is not None and self.index is not None and self.index.tracked:
            self._from_shards(keys, out)
        rest = np.flatnonzero(out < 0)
        if self.index is not None and len(rest):
            out[rest] = self.index.lookup(keys[rest])
        out[out >= self.rows] = -1  # committed after this snapshot
        if self.covered < len(self.entries):
            missing = np.flatnonzero(out < 0)
            if len(missing):
                tail_keys, tail_vals = self._tail_table()
                probe = keys[missing]
                at = np.minimum(np.searchsorted(tail_keys, probe), max(len(tail_keys) - 1, 0))
                hit = (tail_keys[at] == probe) if len(tail_keys) else np.zeros(len(probe), bool)
                out[missing[hit]] = tail_vals[at[hit]]
        self._learn(out)
        return out

    def _learn(self, rows: np.ndarray) -> None:
        """Predict the next batch's shards when this batch's hits lie within two neighbouring shards."""
        found = rows[(rows >= 0) & (rows < self.starts[min(self.covered, len(self.entries))])]
        self._next = None
        if len(found):
            first, last = self.shard_of(np.array([found.min(), found.max()]))
            if last - first <= 1 and (after := int(self.shard_of(np.array([found.max() + 1]))[0])) < self.covered:
                self._next = after

    def _from_shards(self, keys: np.ndarray, out: np.ndarray) -> None:
        """Answer ``keys`` found in the predicted shards (their own ``key`` column) into ``out``."""
        assert self._next is not None
        wanted = range(self._next, min(self._next + PREDICTED_SHARDS, self.covered))
        for position in [p for p in self._shard_digests if p not in wanted]:
            del self._shard_digests[position]
        for position in wanted:
            table = self._shard_digests.get(position)
            if table is None:
                try:
                    shard_keys = digests(self._read_keys(self.entries[position]))
                except StoreError:  # unreadable: the index answers (and the store's checks name the shard)
                    return
                rows = np.arange(self.starts[position], self.starts[position] + len(shard_keys), dtype=np.int64)
                order = np.argsort(shard_keys, kind="stable")
                table = self._shard_digests[position] = (shard_keys[order], rows[order])
                self.stats["shards_read"] += 1
            shard_keys, rows = table
            if not len(shard_keys) or len(shard_keys) != self.starts[position + 1] - self.starts[position]:
                continue
            rest = np.flatnonzero(out < 0)
            at = np.minimum(np.searchsorted(shard_keys, keys[rest]), len(shard_keys) - 1)
            hit = shard_keys[at] == keys[rest]
            found = rows[at[hit]]
            if self.index is not None and self.index.shadowed:  # a key stored twice: the index answers it
                keep = ~np.isin(found, np.fromiter(self.index.shadowed, np.int64))
                hit[np.flatnonzero(hit)[~keep]] = False
                found = found[keep]
            out[rest[hit]] = found
            self.stats["predicted"] += len(found)

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
    index.add_filters()  # segments written before the filters existed: searched for every key until then
    index.track_shadowed()  # an index written before keys stored twice were recorded: found once
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
