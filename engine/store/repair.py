"""Drop damaged shards from a store's manifest (one atomic commit); their items are embedded again later.

Used by ``headstart cache repair`` and by every writer when it opens (so a re-run of ``headstart embed``
re-embeds what a damaged shard held). The caller holds the write lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import integrity
from . import keylookup
from . import shards as sh
from .indexing import INDEX_DIR, index_files

if TYPE_CHECKING:
    from .features import FeatureStore

SHARD_DIR = "shards"


def remove_orphans(root: Path, manifest: dict[str, Any]) -> list[Path]:
    """Remove shard and index files the manifest does not list, key indexes of other epochs and their
    orphan segments (caller holds the write lock)."""
    live = {s["file"] for s in manifest["shards"]} | index_files(manifest.get("index"))
    removed = keylookup.remove_stale(root, manifest.get("key_index"))
    for sub in (SHARD_DIR, INDEX_DIR):
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_file() and path.relative_to(root).as_posix() not in live:
                path.unlink()
                removed.append(path)
    return removed


def drop_shards(store: "FeatureStore", damaged: dict[str, str]) -> list[dict[str, Any]]:
    """Commit a manifest without the shards in ``damaged`` (file → reason); return what was dropped.

    Row ids of later vector shards shift, so an index that covers a dropped shard's rows is dropped too
    (it is derived: the next search or ``headstart cache index`` builds it again), and the key index
    starts a new epoch, indexed afresh from the remaining shards here.
    """
    manifest = store.manifest
    if not damaged:
        return []
    kept, dropped, first_dropped_row, row = [], [], None, 0
    for entry in manifest["shards"]:
        if entry["file"] in damaged:
            dropped.append({"file": entry["file"], "kind": entry["kind"], "rows": int(entry["rows"]),
                            "reason": damaged[entry["file"]]})
            if entry["kind"] == sh.VECTORS and first_dropped_row is None:
                first_dropped_row = row
        else:
            kept.append(entry)
        if entry["kind"] == sh.VECTORS:
            row += int(entry["rows"])
    if not dropped:
        return []
    new = dict(manifest, shards=kept, key_index=keylookup.new_epoch(),
               n_vectors=sum(int(e["rows"]) for e in kept if e["kind"] == sh.VECTORS),
               n_errors=sum(int(e["rows"]) for e in kept if e["kind"] == sh.ERRORS))
    index = manifest.get("index")
    if index and first_dropped_row is not None and first_dropped_row < int(index["n_vectors"]):
        new["index"] = None
    store.commit_manifest(new)
    store.forget_reads()
    remove_orphans(store.path, store.manifest)  # the damaged files, a dropped index, the old key index
    store.sync_key_index()
    return dropped


def repair_store(store: "FeatureStore", lock_timeout: float) -> dict[str, Any]:
    """Check every shard and the index afresh (no per-process trust), drop what is damaged."""
    from .lock import StoreLock

    with StoreLock(store.path, lock_timeout):
        store.refresh()
        store.forget_reads()
        damaged = {}
        for entry in store.manifest["shards"]:
            problem = integrity.shard_problem(store.path, entry, store.dim, store.unit_norm, use_cache=False)
            if problem is not None:
                damaged[entry["file"]] = problem
        dropped = drop_shards(store, damaged)
        index_note = None
        index = store.manifest.get("index")
        if index:
            integrity.forget(store.path, index["file"])
            problem = integrity.index_problem(store.path, index)
            if problem is not None:
                store.commit_manifest(dict(store.manifest, index=None))
                remove_orphans(store.path, store.manifest)
                index_note = f"dropped the index ({problem}); the next search or `headstart cache index` rebuilds it"
        elif dropped and any(d["kind"] == sh.VECTORS for d in dropped):
            index_note = "the index no longer matched the remaining shards; the next search or " \
                         "`headstart cache index` rebuilds it"
    return {"path": str(store.path), "fingerprint": store.fingerprint, "dropped": dropped,
            "items_to_reembed": sum(d["rows"] for d in dropped), "index": index_note,
            "n_vectors": len(store), "n_errors": int(store.manifest["n_errors"])}
