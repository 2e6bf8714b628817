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
workers met the same content) still counts once. Exact as long as row ids keep their meaning during the job:
shards are only appended while the job's writer holds the lock; damaged shards are dropped (which renumbers
rows) by the job's first look-up, before :meth:`MetRows.start` takes the row counts.
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

    @property
    def started(self) -> bool:
        return self._base is not None

    def start(self, vector_rows: int, error_rows: int) -> None:
        """The store's row counts before the job commits anything (call after its first look-up)."""
        self._base = (int(vector_rows), int(error_rows))
        self._bits = (np.zeros(-(-self._base[0] // 8), np.uint8), np.zeros(-(-self._base[1] // 8), np.uint8))

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
