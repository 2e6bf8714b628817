"""Which content keys an embedding job has met already: what tells a duplicate row from a cache hit.

Per-item state of a job must not grow like a set of every key. The store answers most of it:

* a key the store holds in a row committed *during this job* was met earlier in the job (the job committed
  it): a duplicate;
* a key the store held *before the job* is a cache hit the first time the job meets it, a duplicate after:
  :class:`MetRows` keeps one bit per row the store held when the job started (1.25 MB at 10M rows, not
  8 B or 150 B a key met), set when the job meets that row;
* a key the store does not hold is a duplicate exactly when it is in flight (:class:`InFlight`: the exact
  keys of the chunks planned but not committed yet); once a chunk commits, its keys are found by look-ups.

Look-ups give one row per key (the smallest, :meth:`KeyIndex.lookup`), so a key stored twice (two Ray
workers met the same content) still counts once. Shards are only appended while the job's writer holds the
lock, except that a look-up that hits a damaged shard drops it (a new key-index epoch, rows renumbered):
:meth:`MetRows.follow` then carries the bits of the surviving shards over to the new numbering.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np


class MetRows:
    """A bit per row (vectors; error records) the store held when the job started: met by the job yet?"""

    def __init__(self) -> None:
        self._base: tuple[int, int] | None = None
        self._bits: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.uint8), np.zeros(0, np.uint8))
        self._epoch: str | None = None
        self._shards: tuple[list[tuple[str, int]], list[tuple[str, int]]] = ([], [])  # (file, rows) held before

    def start(self, manifest: dict) -> None:
        """The rows of the store's ``manifest`` before the job commits anything."""
        self._epoch = manifest.get("key_index")
        self._shards = _shards(manifest)
        self._base = tuple(sum(rows for _, rows in kind) for kind in self._shards)  # type: ignore[assignment]
        self._bits = tuple(np.zeros(-(-n // 8), np.uint8) for n in self._base)  # type: ignore[assignment]

    def follow(self, manifest: dict) -> None:
        """Renumber after the store dropped shards (``manifest``, the snapshot the rows at hand come from, has
        another key-index epoch): bits of surviving shards move to their new rows, dropped shards' go."""
        if self._base is None:
            self.start(manifest)
            return
        if manifest.get("key_index") == self._epoch:
            return
        now = _shards(manifest)
        kept: list[list[tuple[str, int]]] = [[], []]
        bits: list[np.ndarray] = []
        for kind in (0, 1):
            old = np.unpackbits(self._bits[kind], bitorder="little")
            alive = {name for name, _ in now[kind]}
            starts = np.cumsum([0] + [rows for _, rows in self._shards[kind]])
            parts = []
            for (name, rows), start in zip(self._shards[kind], starts):
                if name in alive:  # a drop keeps the order of the rest: survivors still come first
                    kept[kind].append((name, rows))
                    parts.append(old[start:start + rows])
            joined = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
            bits.append(np.packbits(joined, bitorder="little"))
        self._shards = (kept[0], kept[1])
        self._base = tuple(sum(rows for _, rows in kind) for kind in kept)  # type: ignore[assignment]
        self._bits = (bits[0], bits[1])
        self._epoch = manifest.get("key_index")

    def meet(self, vector_rows: np.ndarray, error_rows: np.ndarray) -> np.ndarray:
        """Whether each row of a chunk (its key's vector row, else error row; -1 where the store has neither)
        is a key the job meets for the first time among those the store held before it; marks them met."""
        if self._base is None:
            raise RuntimeError("MetRows.meet before start")
        first = np.zeros(len(vector_rows), bool)
        for kind, rows in enumerate((vector_rows, np.where(vector_rows >= 0, -1, error_rows))):
            where = np.flatnonzero((rows >= 0) & (rows < self._base[kind]))
            if not len(where):
                continue
            unique, at = np.unique(rows[where], return_index=True)  # the first row of each key in the chunk
            byte, mask = unique >> 3, np.left_shift(1, unique & 7).astype(np.uint8)
            bits = self._bits[kind]
            new = (bits[byte] & mask) == 0
            first[where[at[new]]] = True
            np.bitwise_or.at(bits, byte[new], mask[new])
        return first


def _shards(manifest: dict) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(file, rows) of the vector shards and of the error shards, in row order."""
    out: tuple[list[tuple[str, int]], list[tuple[str, int]]] = ([], [])
    for entry in manifest["shards"]:
        out[0 if entry["kind"] == "vectors" else 1].append((entry["file"], int(entry["rows"])))
    return out


class InFlight:
    """The keys of each planned chunk until it is committed (shared by the planning and committing threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: dict[int, frozenset[str]] = {}
        self._next = 0

    def add(self, keys: Sequence[str]) -> int:
        """Register a chunk's keys; returns the ticket :meth:`done` takes."""
        with self._lock:
            ticket, self._next = self._next, self._next + 1
            self._chunks[ticket] = frozenset(keys)
            return ticket

    def done(self, ticket: int) -> None:
        """The chunk is committed: its keys are in the store now."""
        with self._lock:
            self._chunks.pop(ticket, None)

    def snapshot(self) -> list[frozenset[str]]:
        """The chunks in flight now (take it *before* the store look-up it completes: a chunk committed in
        between is then either in the snapshot or visible to the look-up)."""
        with self._lock:
            return list(self._chunks.values())
