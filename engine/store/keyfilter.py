"""A blocked Bloom filter per key-index segment: which segments a look-up can skip without searching them.

A look-up that searches every segment of the key index costs one binary search per segment and key; at
10M keys that is 13 segments, and each search of a large segment touches pages all over its arrays. The
filter answers "surely not here" for most segments a key is not in, with one 64-byte block per key:

* ``block_count(n)`` blocks of 512 bits (8 uint64 words) for a segment of ``n`` keys (~:data:`BITS_PER_KEY`
  bits a key); a digest's block is chosen by its first 32 bits, *monotonically* (``blocks_of``), so a
  sorted segment fills its blocks in order: merges build the filter block by block (:class:`FilterBuilder`,
  memory of one merge step), and the keys of one block range are one range of the segment;
* :data:`PROBES` bits in that block come from the digest's last 8 bytes (independent of the block).

False positives (~1 %) only cost a search that finds nothing; there are no false negatives for an intact
file. The filter is derived data like the index itself (``<segment>.filter.npy``, rebuilt from the
segment's keys when missing: :meth:`KeyIndex.add_filters`).
"""

from __future__ import annotations

import numpy as np

BITS_PER_KEY = 12
PROBES = 6  # bits set per key, 9 bits of the digest's low half each
WORDS = 8  # uint64 words per block: one 64-byte cache line
CHUNK = 1 << 15  # digests per step of FilterBuilder.add (its masks: 2 MB)
_U = np.uint64


def block_count(size: int) -> int:
    return max(1, -(-size * BITS_PER_KEY // (WORDS * 64)))


def blocks_of(hi: np.ndarray, count: int) -> np.ndarray:
    """Block of each digest (``hi``: its first 8 bytes as uint64), nondecreasing in ``hi``, in ``[0, count)``."""
    return ((hi >> _U(32)) * _U(count) >> _U(32)).astype(np.intp)


def low_half(keys: np.ndarray) -> np.ndarray:
    """Last 8 bytes of each 16-byte digest as uint64."""
    return np.ascontiguousarray(keys, dtype="S16").view(">u8")[1::2].astype(np.uint64)


def masks(lo: np.ndarray) -> np.ndarray:
    """(n, 8) uint64: the bits each digest sets in (or needs from) its block."""
    out = np.zeros((len(lo), WORDS), np.uint64)
    rows = np.arange(len(lo))
    for j in range(PROBES):
        pos = (lo >> _U(9 * j)) & _U(511)
        out[rows, (pos >> _U(6)).astype(np.intp)] |= _U(1) << (pos & _U(63))
    return out


def may_contain(words: np.ndarray, hi: np.ndarray, probe_masks: np.ndarray) -> np.ndarray:
    """Whether each probe may be in the segment whose filter is ``words`` ((count, 8) uint64)."""
    rows = words[blocks_of(hi, len(words))]
    return ((rows & probe_masks) == probe_masks).all(axis=1)


class FilterBuilder:
    """Builds the filter of a segment of ``size`` keys from its digests in sorted order, block by block:
    :meth:`add` returns the blocks that are complete (every later digest falls in a later block)."""

    def __init__(self, size: int) -> None:
        self.count = block_count(size)
        self._next = 0  # first block not returned yet
        self._carry: tuple[int, np.ndarray] | None = None  # the last block seen, still open

    def add(self, keys: np.ndarray, hi: np.ndarray) -> np.ndarray:
        if len(keys) > CHUNK:  # the (n, 8) masks of a whole merge step would be 64 B a key
            return np.concatenate([self.add(keys[lo:lo + CHUNK], hi[lo:lo + CHUNK])
                                   for lo in range(0, len(keys), CHUNK)])
        if not len(keys):
            return np.zeros((0, WORDS), np.uint64)
        blocks = blocks_of(hi, self.count)
        starts = np.flatnonzero(np.concatenate([[True], blocks[1:] != blocks[:-1]]))
        rows = np.bitwise_or.reduceat(masks(low_half(keys)), starts, axis=0)
        at = blocks[starts]
        if self._carry is not None:
            block, words = self._carry
            if at[0] == block:
                rows[0] |= words
            else:
                at, rows = np.concatenate([[block], at]), np.concatenate([words[None, :], rows])
        self._carry = (int(at[-1]), rows[-1].copy())
        dense = np.zeros((int(at[-1]) - self._next, WORDS), np.uint64)
        dense[at[:-1] - self._next] = rows[:-1]
        self._next = int(at[-1])
        return dense

    def finish(self) -> np.ndarray:
        dense = np.zeros((self.count - self._next, WORDS), np.uint64)
        if self._carry is not None:
            dense[self._carry[0] - self._next] = self._carry[1]
        self._next = self.count
        return dense


def build(keys: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The whole filter of sorted digests ``keys`` (``hi``: their first 8 bytes), flat uint64."""
    builder = FilterBuilder(len(keys))
    return np.concatenate([builder.add(keys, hi), builder.finish()]).reshape(-1)


__all__ = ["BITS_PER_KEY", "FilterBuilder", "block_count", "blocks_of", "build", "masks", "may_contain"]
