"""Bring a store's FAISS index up to date with its shards (caller holds the write lock).

Every new index gets a new generation-named file set, written before the manifest
that names it; superseded files are removed after. A reader still holding the old
manifest finds its index gone and falls back to an exact scan of the shards.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import StoreError
from . import index as ix
from . import integrity
from .atomic import sha256_file, write_bytes_atomic

if TYPE_CHECKING:
    from .features import FeatureStore

INDEX_DIR = "index"


def _sample(store: "FeatureStore", size: int) -> np.ndarray:
    """``size`` rows spread evenly over the store."""
    n = len(store)
    ids = np.unique(np.linspace(0, n - 1, num=min(size, n)).astype(np.int64))
    return store.read_rows(ids)  # maps each shard only while its rows are copied


def update_index(store: "FeatureStore", rebuild: bool = False) -> None:
    """Extend (or, with ``rebuild``, rebuild) the index so it covers every vector."""
    n = len(store)
    config = store.index_config
    kind = config.resolve(n)
    old = store.manifest.get("index")
    if n == 0 or (not rebuild and old and old["type"] == kind and old["n_vectors"] == n):
        return
    try:
        entry = _build_flat(store, old, rebuild) if kind == ix.FLAT else _build_ivf(store, old, rebuild, config)
        store.commit_manifest(dict(store.manifest, index=entry))
    except OSError as exc:
        raise StoreError(f"could not write the index of feature store {store.path}: {exc.strerror or exc}",
                         hint="free disk space and run `headstart cache verify`; the shards are intact and "
                              "the index is rebuilt on the next write") from exc
    _remove_unused(store.path, entry, old)


def _new_name(store: "FeatureStore", stem: str, suffix: str) -> str:
    return f"{INDEX_DIR}/{stem}-{store.manifest['generation'] + 1:06d}-{secrets.token_hex(3)}{suffix}"


def _build_flat(store: "FeatureStore", old: dict | None, rebuild: bool) -> dict:
    import faiss

    start, covered = None, 0
    if old and old["type"] == ix.FLAT and not rebuild and integrity.index_problem(store.path, old) is None:
        try:
            start = faiss.read_index(str(store.path / old["file"]))
            covered = int(old["n_vectors"])
        except RuntimeError:
            start, covered = None, 0
    ids = np.arange(covered, len(store), dtype=np.int64)

    def blocks():
        for lo in range(0, len(ids), 65536):
            yield store.read_rows(ids[lo:lo + 65536])

    index = ix.build_flat(store.dim, blocks, start)
    name = _new_name(store, "flat", ".faiss")
    data = ix.serialize(index)
    digest = write_bytes_atomic(store.path / name, data)
    return {"type": ix.FLAT, "file": name, "sha256": digest, "bytes": len(data), "n_vectors": int(index.ntotal)}


def _build_ivf(store: "FeatureStore", old: dict | None, rebuild: bool, config: ix.IndexConfig) -> dict:
    n = len(store)
    base, covered = None, 0
    if old and old["type"] == ix.IVF and not rebuild and integrity.index_problem(store.path, old) is None:
        try:
            base = ix.load(store.path / old["file"], ix.IVF, config.nprobe)
            trained_name = old["trained"]
            trained = (store.path / trained_name).read_bytes()
            covered = int(old["n_vectors"])
        except (RuntimeError, OSError):
            base, covered = None, 0
    if base is None:
        nlist = config.lists_for(n)
        trained = ix.train_ivf(_sample(store, config.train_rows(n)), nlist)
        trained_name = _new_name(store, "ivf-trained", ".faiss")
        write_bytes_atomic(store.path / trained_name, trained)
    blocks = []
    try:
        for entry, first in store.vector_shards():
            if first >= covered:  # shards are whole: an index covers a prefix of them
                block = store.path / INDEX_DIR / "blocks" / f"{Path(entry['file']).stem}-{secrets.token_hex(3)}.faiss"
                write_bytes_atomic(block, ix.ivf_block(trained, store.shard_vectors(entry), first))
                blocks.append(block)
        name = _new_name(store, "ivf", ".faiss")
        ivfdata = name[:-len(".faiss")] + ".ivfdata"
        data = ix.merge_ivf(trained, base, blocks, store.path / ivfdata)
    finally:
        for block in blocks:
            block.unlink(missing_ok=True)
    digest = write_bytes_atomic(store.path / name, data)
    return {"type": ix.IVF, "file": name, "sha256": digest, "bytes": len(data), "n_vectors": n,
            "ivfdata": ivfdata, "ivfdata_bytes": (store.path / ivfdata).stat().st_size,
            "ivfdata_sha256": sha256_file(store.path / ivfdata), "trained": trained_name}


def index_files(entry: dict | None) -> set[str]:
    """Every file (relative path) an index entry refers to."""
    if not entry:
        return set()
    files = {entry["file"]}
    if entry["type"] == ix.IVF:
        files |= {entry["ivfdata"], entry["trained"]}
    return files


def _remove_unused(root: Path, new: dict, old: dict | None) -> None:
    for rel in index_files(old) - index_files(new):
        try:
            (root / rel).unlink()
        except OSError:
            pass
