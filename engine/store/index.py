"""The FAISS index over a store's shards: derived, rebuildable, written atomically.

* ``flat``: exact inner product (``IndexFlatIP``), ids = row positions; serialised with
  ``faiss.serialize_index`` and written through :mod:`headstart.engine.store.atomic`.
* ``ivf``: an on-disk ``IndexIVFFlat`` (inner product). The coarse quantizer is trained
  once on a sample; each new shard becomes a temporary *block* index holding its rows
  (ids = global row positions); the previous generation's lists and the new blocks are
  merged into ``<name>.ivfdata`` (``OnDiskInvertedLists``) under a new generation name,
  so no live file is ever rewritten. Loaded with plain
  ``read_index`` (``IO_FLAG_ONDISK_SAME_DIR``), never ``IO_FLAG_MMAP`` (it segfaulted at
  search on faiss-cpu 1.15.1).

An index may cover only a prefix of the store (a writer was killed before updating
it); :func:`search` scans the uncovered tail exactly and merges the results.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

FLAT = "flat"
IVF = "ivf"


@dataclass(frozen=True)
class IndexConfig:
    """How a store's index is built.

    ``kind``: ``"auto"`` (flat below ``ivf_threshold`` vectors, else IVF), ``"flat"`` or ``"ivf"``.
    ``nlist``: IVF lists (default ``2·√n`` clamped to [16, 65536]); ``nprobe``: lists visited per
    query; ``train_size``: rows sampled to train the quantizer (default ``min(n, 40·nlist)``).
    """

    kind: str = "auto"
    ivf_threshold: int = 200_000
    nlist: int | None = None
    nprobe: int = 16
    train_size: int | None = None

    def resolve(self, n: int) -> str:
        if self.kind == "auto":
            return IVF if n >= self.ivf_threshold else FLAT
        return self.kind

    def lists_for(self, n: int) -> int:
        if self.nlist:
            return self.nlist
        return int(min(65536, max(16, 2 * int(np.sqrt(max(n, 1))))))

    def train_rows(self, n: int) -> int:
        return int(min(n, self.train_size or 40 * self.lists_for(n)))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "IndexConfig":
        return cls(**{k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__})


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """faiss printf()s on-disk bookkeeping to C stdout; drop it (it would corrupt ``--json`` output)."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def serialize(index) -> memoryview:
    import faiss

    return memoryview(faiss.serialize_index(index))


def build_flat(dim: int, blocks: Callable[[], Iterator[np.ndarray]], start=None) -> object:
    """A flat IP index over ``blocks()`` (in id order), appended to ``start`` when given."""
    import faiss

    index = start if start is not None else faiss.IndexFlatIP(dim)
    for block in blocks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def train_ivf(sample: np.ndarray, nlist: int) -> memoryview:
    """Train an empty IVF-flat (inner product) on ``sample``; return its serialised bytes."""
    import faiss

    dim = sample.shape[1]
    nlist = max(1, min(nlist, len(sample)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return serialize(index)


def ivf_block(trained: bytes | memoryview, vectors: np.ndarray, first_id: int) -> memoryview:
    """One shard's rows added to a copy of the trained IVF, ids from ``first_id``."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    ids = np.arange(first_id, first_id + len(vectors), dtype=np.int64)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return serialize(index)


def merge_ivf(trained: bytes | memoryview, base, block_paths: list[Path], ivfdata: Path) -> memoryview:
    """Merge ``base`` (an IVF index or None) and block files into a fresh on-disk ``ivfdata`` (fsynced).

    Blocks are memory-mapped while merging (as ``faiss.contrib.ondisk.merge_ondisk`` does),
    so memory stays bounded; returns the serialised index that refers to ``ivfdata``.
    """
    import faiss

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    ivf = faiss.extract_index_ivf(index)
    sources = [base] if base is not None else []
    sources += [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in block_paths]
    lists = faiss.InvertedListsPtrVector()
    for source in sources:
        lists.push_back(faiss.extract_index_ivf(source).invlists)
    with _quiet_stdout():
        ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
        ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    del sources
    fd = os.open(ivfdata, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return serialize(index)


def load(path: Path, kind: str, nprobe: int = 16):
    """Load an index file written by this module (IVF: its ivfdata must sit beside it)."""
    import faiss

    if kind == IVF:
        with _quiet_stdout():
            index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
        faiss.extract_index_ivf(index).nprobe = nprobe
        return index
    return faiss.read_index(str(path))


def search(index, covered: int, tail: np.ndarray | None, queries: np.ndarray, k: int,
           hits: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) over ``index`` (ids < ``covered``) plus an exact scan of ``tail``.

    ``hits``: the index's own (scores, ids) for ``queries`` when the caller already has them.
    Missing neighbours have id ``-1`` and score ``-inf``.
    """
    nq = len(queries)
    scores = np.full((nq, 0), -np.inf, dtype=np.float32)
    ids = np.full((nq, 0), -1, dtype=np.int64)
    if hits is None and index is not None and index.ntotal:
        hits = index.search(queries, min(k, index.ntotal))
    if hits is not None:
        s, i = hits
        s = np.where(i < 0, -np.inf, s).astype(np.float32)
        scores, ids = np.hstack([scores, s]), np.hstack([ids, i])
    if tail is not None and len(tail):
        sims = queries @ tail.T
        top = min(k, tail.shape[0])
        part = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        scores = np.hstack([scores, np.take_along_axis(sims, part, axis=1).astype(np.float32)])
        ids = np.hstack([ids, part.astype(np.int64) + covered])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.hstack([scores, np.full((nq, pad), -np.inf, dtype=np.float32)])
        ids = np.hstack([ids, np.full((nq, pad), -1, dtype=np.int64)])
    return scores, ids
