"""Which content keys an embedding job has met already: what tells a duplicate row from a cache hit.

Per-item state of a job must not grow like a Python set of every key (~150 B a key). Two parts:

* :class:`SeenDigests`: an 8-byte digest of every key met (:func:`short_digests`), in sorted runs merged LSM-style (8 B a key, a
  look-up is one ``searchsorted`` per run). It is consulted only for keys the store already holds, to count
  a row as *cached* (first time this run) or as a *duplicate*; a digest collision (odds ~n²/2⁶⁵: 3·10⁻⁶ at
  10M keys) can only move one row between those two counts, never skip work.
* :class:`InFlight`: the exact keys of the chunks planned but not committed yet (a few chunks). A key the
  store does not hold is a duplicate exactly when it is in flight; once a chunk commits, its keys are found
  by store look-ups instead.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from ..store.keyindex import digests


def short_digests(keys: Sequence[str]) -> np.ndarray:
    """A ``uint64`` per key: its first 16 hex digits when every key is hex (content keys are sha256 hex: one
    vectorised parse, no hashing), else the first 8 bytes of its 16-byte store digest."""
    if not len(keys):
        return np.empty(0, np.uint64)
    head = "".join([key[:16] for key in keys])
    if len(head) == 16 * len(keys):
        try:
            raw = bytes.fromhex(head)
        except ValueError:  # a reader plugin's own key format
            raw = b""
        if len(raw) == 8 * len(keys):  # (fromhex skips whitespace: then it is shorter)
            return np.frombuffer(raw, ">u8").astype(np.uint64)
    return np.ascontiguousarray(digests(keys)).view(np.uint64).reshape(len(keys), 2)[:, 0].copy()


#: digests per sorted run at most: a merge's transient copy stays bounded (16 MB) however many keys were met,
#: at the price of one ``searchsorted`` per full run per look-up (10 runs at 10M keys)
MAX_RUN = 1 << 21


class SeenDigests:
    """A growing set of ``uint64`` digests: sorted runs, a new run merged into the last while it is no smaller
    (and the merged run stays within :data:`MAX_RUN`)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def contains(self, wanted: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(wanted), bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, wanted), len(run) - 1)
            hit |= run[at] == wanted
        return hit

    def add(self, new: np.ndarray) -> None:
        if not len(new):
            return
        run = np.sort(new)
        while self._runs and len(self._runs[-1]) <= len(run) and len(self._runs[-1]) + len(run) <= MAX_RUN:
            # two sorted runs: the stable sort (timsort on uint64) merges them in linear time
            run = np.sort(np.concatenate([self._runs.pop(), run]), kind="stable")
        self._runs.append(run)


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
