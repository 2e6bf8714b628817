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


def count_seen_digests(training: np.ndarray, digests: np.ndarray) -> int:
    """How many of the key ``digests`` (duplicates counted) are among the ``training`` digests (sorted)."""
    if not len(digests) or not len(training):
        return 0
    return int(np.isin(digests, training, assume_unique=False).sum())
