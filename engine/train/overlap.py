"""Which evaluation items a model was trained on.

A model folder keeps 16-byte digests of the content keys its head was fitted on
(``training_keys.npy``, sorted, no pickle); ``evaluate`` counts the labelled evaluation items
among them, so a score measured on training data is flagged instead of trusted.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

FILE = "training_keys.npy"


def key_digests(keys: Iterable[str]) -> np.ndarray:
    """16-byte digests of content keys, one per key, in order (dtype ``S16``)."""
    return np.asarray([hashlib.blake2b(k.encode(), digest_size=16).digest() for k in keys], dtype="S16")


def training_digests(keys: Iterable[str]) -> np.ndarray:
    """The sorted, unique digests kept in a model folder."""
    return np.unique(key_digests(keys))


def count_seen(training: np.ndarray, keys: Iterable[str]) -> int:
    """How many of ``keys`` (duplicates counted) are among the ``training`` digests."""
    return count_seen_digests(training, key_digests(keys))


#: digests looked up per step (their positions and hits: ~25 bytes each, whatever the number of items)
SEEN_STEP = 1 << 18


def count_seen_digests(training: np.ndarray, digests: np.ndarray) -> int:
    """How many of the key ``digests`` (duplicates counted) are among the ``training`` digests (sorted, as a
    model keeps them): binary searches a step at a time, so the memory is the step's, not the items'
    (``np.isin`` sorted a concatenated copy of both arrays: ~100 bytes an item)."""
    if not len(digests) or not len(training):
        return 0
    if len(training) > 1 and not bool((training[1:] >= training[:-1]).all()):
        training = np.sort(training)
    seen = 0
    last = len(training) - 1
    for lo in range(0, len(digests), SEEN_STEP):
        part = digests[lo:lo + SEEN_STEP]
        where = np.minimum(np.searchsorted(training, part), last)
        seen += int((training[where] == part).sum())
    return seen
