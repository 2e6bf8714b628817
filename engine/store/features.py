"""The feature store: one directory per backbone fingerprint, append-only shards, a derived FAISS index.

Layout of ``<home>/features/<fingerprint>/``::

    manifest.json                    written last, replaced atomically; lists the shards
    shards/<seq>-<token>.vectors.arrow   key, ref, vector (fixed-size list<float32>[dim])
    shards/<seq>-<token>.errors.arrow    key, ref, reason, stage
    index/...                        FAISS index (flat or on-disk IVF), derived, rebuildable
    .lock                            flock'ed by the one writer

A :class:`FeatureStore` is a snapshot of one manifest: readers never see a torn state.
Write with ``with store.writer() as w: w.add(keys, vectors, refs)``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import DimensionMismatchError, StoreDamagedError, StoreError, StoreLockedError, StoreReadOnlyError
from ..faultpoints import pause_point
from . import index as ix
from . import integrity
from . import shards as sh
from .verify import VerifyReport, verify_store
from .atomic import clean_temp_files
from .keyindex import DIGEST, digests
from . import keylookup
from .keylookup import ERROR_KEYS, VECTOR_KEYS, KindLookup, new_epoch
from .lock import READ_ONLY_ERRNOS, StoreLock, read_only_error
from .manifest import append_commit, log_needs_compaction, new_manifest, read_manifest, write_manifest

DEFAULT_SHARD_SIZE = 4096
DEFAULT_LOCK_TIMEOUT = 60.0
#: A search finding at least this many rows not covered by the index brings the index up to date
#: first (under the write lock); fewer are scanned exactly.
LAZY_INDEX_ROWS = 50_000
_LARGE_BYTES = 512 << 20  # vectors() above this go to a memory-mapped temp file
LOOKUP_BATCH = 1 << 20  # keys looked up at once (a larger call is split: its memory stays that of a batch)


@dataclass(frozen=True)
class ErrorRecord:
    """An item that could not be embedded: its content key, source ref, reason and pipeline stage."""

    key: str
    ref: str | None
    reason: str
    stage: str = "embed"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _warn(message: str) -> None:
    """Tell the user about something the store did on its own (one ``warning:`` line on stderr)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _short(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


class FeatureStore:
    """A snapshot of the store at ``path``; see the module docstring."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, writable: bool) -> None:
        self.path = Path(path)
        self._manifest = manifest
        self.writable = writable
        self._on_damage: Any = None  # set by an open writer: drops damaged shards a look-up runs into
        self._sized: set[str] = set()  # shard files this object found with their recorded size
        self._stat_trusted: set[str] = set()  # ... and their recorded mtime: trusted for look-ups, not hashed
        self._key_indexes: dict[Path, Any] = {}  # key indexes by folder, kept across snapshots (their maps too)
        self._check_all = False  # load(check="all"): the first look-up checks every shard
        # look-ups (an embedding job's reader thread) and commits (its writer) share one object
        self._lookup_lock = threading.RLock()
        self.forget_reads()

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, *, fingerprint: str, dim: int, backbone: str, create: bool = True,
             index_config: ix.IndexConfig | None = None, normalized: bool | None = None) -> "FeatureStore":
        """Open (or create) the store for ``fingerprint`` at ``root`` (``settings.features_dir / fingerprint``).

        ``normalized``: the backbone L2-normalises its output; recorded in a new store's manifest, so
        readers check that every vector they read has unit length.
        Raises :class:`DimensionMismatchError` when ``root`` holds a store of another fingerprint or dim.
        """
        root = Path(root)
        if int(dim) <= 0:
            raise DimensionMismatchError(f"feature store {root}: dim must be positive, got {dim}",
                                         hint="pass the backbone's output dimension")
        manifest = read_manifest(root)
        if manifest is None:
            if not create:
                raise StoreError(f"no feature store at {root}", hint="embed a source first (`headstart embed`)")
            try:
                root.mkdir(parents=True, exist_ok=True)
                with StoreLock(root, DEFAULT_LOCK_TIMEOUT):
                    manifest = read_manifest(root)
                    if manifest is None:
                        config = (index_config or ix.IndexConfig()).as_dict()
                        manifest = write_manifest(root, dict(new_manifest(fingerprint, dim, backbone, config, normalized),
                                                                  key_index=new_epoch()))
            except OSError as exc:
                if exc.errno in READ_ONLY_ERRNOS:
                    raise read_only_error(root, f"creating the feature store of backbone '{backbone}'", exc) from None
                raise
        store = cls(root, manifest, writable=True)
        store._check_identity(fingerprint, int(dim))
        return store

    @classmethod
    def load(cls, path: str | Path, *, check: str = "all") -> "FeatureStore":
        """Open an existing store read-only (:class:`StoreError` when ``path`` has no manifest).

        ``check``: what the first key look-up checks (hashes; once per process and shard): ``"all"``
        every shard, so a reader refuses a damaged store before using any of it; ``"hits"`` only the
        shards its hits are in (plus every shard's size), for processes that only look up which keys
        are stored (a Ray worker skipping cached items) and must not hash the whole store.
        """
        path = Path(path)
        if check not in ("all", "hits"):
            raise StoreError(f"check must be 'all' or 'hits', not {check!r}", hint="see FeatureStore.load")
        manifest = read_manifest(path)
        if manifest is None:
            raise StoreError(f"no feature store at {path}: a directory without a manifest does not exist",
                             hint="check the path, or list stores with `headstart cache info`")
        store = cls(path, manifest, writable=False)
        store._check_all = check == "all"
        return store

    def refresh(self) -> "FeatureStore":
        """Re-read the manifest (pick up other writers' commits)."""
        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"feature store {self.path} lost its manifest",
                             hint="run `headstart cache verify`; re-embed if the store was deleted")
        if manifest.get("generation") != self._manifest.get("generation"):
            self._manifest = manifest
            self.forget_reads()
        return self

    def _check_identity(self, fingerprint: str, dim: int) -> None:
        if self.fingerprint != fingerprint:
            raise DimensionMismatchError(
                f"feature store {self.path} belongs to backbone fingerprint {self.fingerprint}, not {fingerprint}",
                hint="each backbone fingerprint has its own store: use settings.features_dir / fingerprint")
        if self.dim != dim:
            raise DimensionMismatchError(
                f"feature store {self.path} holds {self.dim}-d vectors, not {dim}-d",
                hint="the backbone's output dimension changed: embed into a new store")

    # -- identity ----------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._manifest["fingerprint"]

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def backbone(self) -> str:
        return self._manifest["backbone"]

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    @property
    def unit_norm(self) -> bool:
        """Whether the backbone normalises (readers then check every vector's length)."""
        return bool(self._manifest.get("normalized"))

    @property
    def index_config(self) -> ix.IndexConfig:
        return ix.IndexConfig.from_dict(self._manifest.get("index_config"))

    def __len__(self) -> int:
        return int(self._manifest["n_vectors"])

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, backbone={self.backbone!r}, dim={self.dim}, n={len(self)})"

    # -- cached views of the snapshot ------------------------------------------------
    def forget_reads(self) -> None:
        self._keys: None = None  # there is no in-memory table of every key (see :mod:`.keylookup`)
        self._lookups: dict[str, KindLookup] = {}
        self._all_checked = False
        self._arrays: dict[str, np.ndarray] = {}
        self._searcher: tuple[Any, int] | None = None
        self._tail: np.ndarray | None = None
        self._damaged: dict[str, str] = {}  # shard file -> why it cannot be trusted (found on first read)
        self._intact: set[str] = set()
        self.last_search: dict[str, Any] = {}
        self._search_note: str | None = None

    def _vector_entries(self) -> list[dict]:
        return [s for s in self._manifest["shards"] if s["kind"] == sh.VECTORS]

    # -- integrity: every shard is checked before its first read ---------------------------
    def _check(self, entry: dict) -> bool:
        """Whether shard ``entry`` is intact (checked once per process; see :mod:`.integrity`)."""
        name = entry["file"]
        if name in self._intact:
            return True
        if name in self._damaged:
            return False
        problem = integrity.shard_problem(self.path, entry, self.dim, self.unit_norm)
        if problem is None:
            self._intact.add(name)
            return True
        self._damaged[name] = problem
        return False

    def _size_check(self, entry: dict) -> bool:
        """Whether shard ``entry`` exists with its recorded size (hashing waits for its first read)."""
        name = entry["file"]
        if name in self._sized:
            return True
        if name in self._damaged:
            return False
        problem = integrity.size_problem(self.path, entry)
        if problem is not None:
            self._damaged[name] = problem
        else:
            self._sized.add(name)
        return problem is None

    def damaged_shards(self) -> dict[str, str]:
        """Every shard that fails its check (file → reason); checks the shards not read yet."""
        for entry in self._manifest["shards"]:
            self._check(entry)
        return dict(self._damaged)

    def _damage_summary(self) -> str:
        entries = {s["file"]: s for s in self._manifest["shards"]}
        what = {sh.VECTORS: "vectors", sh.ERRORS: "error records"}
        parts = [f"{name} ({entries[name]['rows']} {what[entries[name]['kind']]}) {why}"
                 for name, why in list(self._damaged.items())[:3]]
        more = f" and {len(self._damaged) - 3} more" if len(self._damaged) > 3 else ""
        return "; ".join(parts) + more

    def _damaged_error(self, doing: str) -> StoreDamagedError:
        return StoreDamagedError(
            f"feature store {self.path} cannot be read for {doing}: {len(self._damaged)} damaged shard(s): "
            f"{self._damage_summary()}",
            hint="re-run `headstart embed` on the source (it drops the damaged shards and embeds their items "
                 "again), or run `headstart cache repair`; `headstart cache verify` shows every problem")

    def _require(self, entry: dict) -> None:
        if not self._check(entry):
            raise self._damaged_error(f"reading {entry['file']}")

    # -- key look-ups (see :mod:`.keylookup`): memory of the batch, not of the store ------------
    def _lookup(self, kind: str) -> KindLookup:
        lookup = self._lookups.get(kind)
        if lookup is None:
            folder = VECTOR_KEYS if kind == sh.VECTORS else ERROR_KEYS
            entries = [e for e in self._manifest["shards"] if e["kind"] == kind]
            lookup = self._lookups[kind] = KindLookup(self.path, folder, self._manifest.get("key_index"),
                                                      entries, self.shard_keys, self._key_indexes)
        return lookup

    def _lookup_check(self, entry: dict) -> bool:
        """Whether a shard a look-up hit can be trusted for "is this key stored?": its size and mtime are
        those recorded when it was written (one ``stat``; its bytes are hashed when its vectors or refs are
        read), else (edited, copied without its mtime, or written before mtimes were recorded) a full check."""
        name = entry["file"]
        if name in self._stat_trusted or name in self._intact:
            return True
        if name not in self._damaged and integrity.stat_matches(self.path, entry):
            self._stat_trusted.add(name)
            return True
        return self._check(entry)

    def _find(self, kind: str, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each key among ``kind`` shards (-1 where absent); the shards holding hits are checked
        first (once per process, :meth:`_lookup_check`): a damaged one is dropped by an open writer (its keys
        then count as absent), else :class:`StoreDamagedError`."""
        if len(keys) > LOOKUP_BATCH:  # digests, sort order and probes of one batch at a time
            return np.concatenate([self._find(kind, keys[lo:lo + LOOKUP_BATCH])
                                   for lo in range(0, len(keys), LOOKUP_BATCH)])
        wanted = keys if isinstance(keys, np.ndarray) and keys.dtype == DIGEST else digests(keys)
        with self._lookup_lock:
            return self._find_digests(kind, wanted)

    def _find_digests(self, kind: str, wanted: np.ndarray) -> np.ndarray:
        while True:
            if self._check_all and not self._all_checked:
                if not all([self._check(entry) for entry in self._manifest["shards"]]):
                    raise self._damaged_error("a lookup")
                self._all_checked = True
            lookup = self._lookup(kind)
            if lookup.sizes_ok is None:  # one stat per shard and process: missing or truncated shards
                lookup.sizes_ok = all([self._size_check(entry) for entry in lookup.entries])
            rows = lookup.find(wanted) if lookup.sizes_ok else None
            if rows is not None:
                hits = rows[rows >= 0]
                shards = np.unique(lookup.shard_of(hits)) if len(hits) else ()
                if all([self._lookup_check(lookup.entries[int(s)]) for s in shards]):
                    return rows
            if self._on_damage is None:
                raise self._damaged_error("a lookup")
            self._on_damage()  # drops the damaged shards: a new snapshot, look again

    def shard_keys(self, entry: dict) -> list[str]:
        """The ``key`` column of one shard (not checked: look-ups check the shards their hits are in)."""
        return sh.read_table(self.path / entry["file"], ["key"]).column("key").to_pylist()

    def vector_shards(self) -> list[tuple[dict, int]]:
        """(manifest entry, first row id) of every vector shard, in row order."""
        entries = self._vector_entries()
        starts = np.cumsum([0] + [int(e["rows"]) for e in entries])
        return [(entry, int(first)) for entry, first in zip(entries, starts)]

    def shard_vectors(self, entry: dict) -> np.ndarray:
        """One vector shard's vectors (checked, memory-mapped, not kept): for one-pass scans."""
        return self._shard_array(entry, cache=False)

    def keys_at(self, ids: np.ndarray) -> np.ndarray:
        """Keys of row ``ids`` (any shape) as an object array; None where an id is negative (no row)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(ids.shape, None, dtype=object)
        flat, result = ids.reshape(-1), out.reshape(-1)
        lookup = self._lookup(sh.VECTORS)
        valid = np.flatnonzero((flat >= 0) & (flat < lookup.rows))
        shard_of = lookup.shard_of(flat[valid])
        for s in np.unique(shard_of):
            entry = lookup.entries[int(s)]
            self._require(entry)
            column = sh.read_table(self.path / entry["file"], ["key"]).column("key")
            where = valid[shard_of == s]
            taken = column.take(flat[where] - lookup.starts[s]).to_pylist()
            for pos, key in zip(where, taken):
                result[pos] = key
        return out

    def _shard_array(self, entry: dict, cache: bool = True) -> np.ndarray:
        """One shard's vectors, memory-mapped; ``cache=False`` for one-pass scans (keeps RSS flat)."""
        array = self._arrays.get(entry["file"])
        if array is None:
            self._require(entry)
            array = sh.vectors_of(sh.read_table(self.path / entry["file"], ["vector"]), self.dim)
            if cache:
                self._arrays[entry["file"]] = array
        return array

    # -- lookups -------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys of all stored vectors, in id order (a list of every key: not for hot paths)."""
        keys: list[str] = []
        for entry, _ in self.vector_shards():
            self._require(entry)
            keys.extend(self.shard_keys(entry))
        return keys

    def contains(self, keys: Sequence[str], include_errors: bool = True) -> np.ndarray:
        """A bool per key: has a vector (or, with ``include_errors``, an error record)."""
        vector_rows, error_rows = self.locate(keys, include_errors)
        return (vector_rows >= 0) | (error_rows >= 0)

    def locate(self, keys: Sequence[str], include_errors: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(vector row, error-record row) of each key, -1 where absent; the error row only of keys without a
        vector (and only with ``include_errors``). Reads no vector: shards are trusted by their recorded
        size and mtime (:func:`.integrity.stat_matches`), hashed only when those differ."""
        wanted = digests(keys)
        vector_rows = self._find(sh.VECTORS, wanted)
        error_rows = np.full(len(wanted), -1, np.int64)
        if include_errors and int(self._manifest.get("n_errors", 0)) and not (vector_rows >= 0).all():
            absent = np.flatnonzero(vector_rows < 0)
            error_rows[absent] = self._find(sh.ERRORS, wanted[absent])
        return vector_rows, error_rows

    def ids(self, keys: Sequence[str]) -> np.ndarray:
        """Row ids of ``keys`` (:class:`StoreError` naming the missing ones)."""
        ids = self._find(sh.VECTORS, keys)
        if (ids < 0).any():
            missing = [keys[i] for i in np.flatnonzero(ids < 0)]
            raise StoreError(f"feature store {self.path} has no vector for {len(missing)} key(s): {_short(missing)}",
                             hint="embed the source first; `headstart cache info --errors` lists failed items")
        return ids

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors of ``keys`` in the order given, as an (n, dim) float32 array."""
        return self.read_rows(self.ids(keys))

    def read_rows(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of row ``ids`` (as :meth:`ids` gives them), in that order, as a new (n, dim) float32 array.

        Needs only the manifest (no key table), and maps each shard just while its rows are copied:
        memory is that of the rows asked for, whatever the size of the store.
        """
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not len(ids):
            return out
        entries = self._vector_entries()
        starts = np.cumsum([0] + [int(e["rows"]) for e in entries])
        if int(ids.min()) < 0 or int(ids.max()) >= starts[-1]:
            raise StoreError(f"feature store {self.path} has {starts[-1]} vectors; row ids "
                             f"{int(ids.min())}..{int(ids.max())} were asked for",
                             hint="take row ids from FeatureStore.ids() on the same snapshot")
        shard_of = np.searchsorted(starts, ids, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(len(entries) + 1))
        for s in np.flatnonzero(np.diff(bounds)):
            where = order[bounds[s]:bounds[s + 1]]
            out[where] = self._shard_array(entries[s], cache=False)[ids[where] - starts[s]]
        return out

    def refs(self, keys: Sequence[str]) -> list[str | None]:
        """Source refs (path or row) of stored ``keys``, in the order given."""
        return self.refs_at(self.ids(keys))

    def refs_at(self, ids: np.ndarray) -> list[str | None]:
        """Source refs recorded with row ``ids`` (the ref of the row that first embedded each key), in order."""
        ids = np.asarray(ids, dtype=np.int64)
        out: list[str | None] = [None] * len(ids)
        lookup = self._lookup(sh.VECTORS)
        shard_of = lookup.shard_of(ids)
        for s in np.unique(shard_of):
            column = sh.read_table(self.path / lookup.entries[int(s)]["file"], ["ref"]).column("ref")
            where = np.flatnonzero(shard_of == s)
            for pos, ref in zip(where, column.take(ids[where] - lookup.starts[s]).to_pylist()):
                out[pos] = ref
        return out

    def iter_shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(keys, vectors) per vector shard, in id order; vectors are memory-mapped."""
        for entry in self._vector_entries():
            array = self._shard_array(entry, cache=False)
            yield self.shard_keys(entry), array

    def vectors(self) -> np.ndarray:
        """All vectors in id order; memory-mapped (one shard, or large stores), else in memory."""
        entries = self._vector_entries()
        if len(entries) == 1:
            return self._shard_array(entries[0])
        n, dim = len(self), self.dim
        if n * dim * 4 > _LARGE_BYTES:
            try:
                handle = tempfile.TemporaryFile(dir=self.path, prefix=".vectors.tmp-")
            except OSError:
                handle = tempfile.TemporaryFile(prefix="headstart-vectors-")
            out = np.memmap(handle, dtype=np.float32, mode="w+", shape=(n, dim))
        else:
            out = np.empty((n, dim), dtype=np.float32)
        pos = 0
        for entry in entries:
            block = self._shard_array(entry)
            out[pos:pos + len(block)] = block
            pos += len(block)
        return out

    def _error_entries(self) -> list[dict]:
        return [e for e in self._manifest["shards"] if e["kind"] == sh.ERRORS]

    def error_records(self) -> list[ErrorRecord]:
        """Error records of keys that have no vector (the first record of a key)."""
        seen: set[str] = set()
        out: list[ErrorRecord] = []
        for entry in self._error_entries():
            self._require(entry)
            table = sh.read_table(self.path / entry["file"]).to_pydict()
            has_vector = self.contains(table["key"], include_errors=False)
            for key, ref, reason, stage, vector in zip(table["key"], table["ref"], table["reason"],
                                                       table["stage"], has_vector):
                if not vector and key not in seen:
                    seen.add(key)
                    out.append(ErrorRecord(key, ref, reason, stage))
        return out

    def errors_for(self, keys: Sequence[str]) -> dict[str, ErrorRecord]:
        """The error records among ``keys`` (keys without a vector only)."""
        if not len(keys) or not int(self._manifest.get("n_errors", 0)):
            return {}  # no error records at all (the common case): no digests to compute
        wanted = digests(keys)
        rows = self._find(sh.ERRORS, wanted)  # error records are few: look them up first
        has_record = np.flatnonzero(rows >= 0)
        if len(has_record):
            rows[has_record[self._find(sh.VECTORS, wanted[has_record]) >= 0]] = -1  # a vector wins
        found = np.flatnonzero(rows >= 0)
        out: dict[str, ErrorRecord] = {}
        if not len(found):
            return out
        lookup = self._lookup(sh.ERRORS)
        shard_of = lookup.shard_of(rows[found])
        for s in np.unique(shard_of):
            entry = lookup.entries[int(s)]
            where = found[shard_of == s]
            table = sh.read_table(self.path / entry["file"]).take(rows[where] - lookup.starts[s]).to_pydict()
            for pos, ref, reason, stage in zip(where, table["ref"], table["reason"], table["stage"]):
                out[keys[pos]] = ErrorRecord(keys[pos], ref, reason, stage)
        return out

    # -- search ----------------------------------------------------------------------
    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"queries of shape {tuple(np.shape(queries))} do not match feature store {self.path} "
                f"({self.dim}-d, backbone {self.backbone})",
                hint="embed the queries with the store's backbone")
        if not np.isfinite(q).all():
            raise StoreError("queries contain NaN or Inf values", hint="check the query vectors")
        return np.ascontiguousarray(q)

    def _index(self) -> tuple[Any, int]:
        """The persisted index and how many rows it covers; (None, 0) when absent or superseded.

        The index files are checked against the manifest (size, sha256) before loading; a damaged
        index is rebuilt from the shards, or, when the store cannot be written now, left aside for
        an exact scan (:attr:`last_search` says which).
        """
        if self._searcher is None:
            entry = self._manifest.get("index")
            self._searcher = (None, 0)
            if entry:
                problem = integrity.index_problem(self.path, entry)
                if problem is None:
                    try:
                        index = ix.load(self.path / entry["file"], entry["type"], self.index_config.nprobe)
                    except (RuntimeError, OSError) as exc:
                        problem = f"index file {entry['file']} cannot be loaded: {exc}"
                    else:
                        if index.ntotal == int(entry["n_vectors"]):
                            self._searcher = (index, int(entry["n_vectors"]))
                        else:
                            problem = f"index holds {index.ntotal} vectors, the manifest says {entry['n_vectors']}"
                if problem is not None:
                    self._replace_index(entry, problem)
        return self._searcher

    def _replace_index(self, entry: dict, problem: str) -> None:
        """Rebuild a damaged index from the shards (under the lock); else leave it aside (exact scan)."""
        current = read_manifest(self.path) or {}
        if (current.get("index") or {}).get("file") != entry["file"]:
            self._search_note = "the index was replaced by a newer writer meanwhile; searched the shards exactly"
            return
        try:
            with StoreLock(self.path, timeout=0.0):
                self.refresh()
                if (self._manifest.get("index") or {}).get("file") == entry["file"]:
                    from .indexing import update_index

                    update_index(self, rebuild=True)
        except (StoreLockedError, StoreReadOnlyError) as exc:
            self._searcher, self._tail = (None, 0), None
            self._search_note = (f"{problem}; not rebuilt ({exc.message}); searched the shards exactly")
            return
        self._searcher, self._tail = None, None
        new = self._manifest.get("index") or {}
        index = ix.load(self.path / new["file"], new["type"], self.index_config.nprobe) if new else None
        self._searcher = (index, int(new["n_vectors"])) if new else (None, 0)
        self._search_note = f"{problem}; rebuilt the index from the shards"

    def _index_hits(self, index: Any, covered: int, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The index's top-``k``, each score checked against the exact product with the stored row
        (cheap: k rows per query); None when the index returns ids or scores the shards disagree with."""
        if index is None or not index.ntotal:
            return None
        scores, ids = index.search(q, min(k, index.ntotal))
        valid = ids >= 0
        if (ids[valid] >= covered).any():
            return None
        rows = np.nonzero(valid)
        exact = np.einsum("ij,ij->i", q[rows[0]], self.read_rows(ids[valid]))
        return (scores, ids) if integrity.scores_match(scores[valid], exact) else None

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product neighbours: (scores (q, k) float32, keys (q, k) object; None when fewer).

        :attr:`last_search` tells how: the index type, rows it covered, rows scanned exactly, and a note
        when the index was rebuilt or left aside.
        """
        q = self._check_queries(queries)
        self._search_note = None
        self._refresh_index_if_far_behind()
        index, covered = self._index()
        hits = self._index_hits(index, covered, q, int(k)) if index is not None else None
        if index is not None and hits is None and index.ntotal:
            entry = self._manifest.get("index") or {}
            self._replace_index(entry, f"index file {entry.get('file')} returns neighbours whose scores do not "
                                       "match the shards")
            index, covered = self._searcher
            hits = self._index_hits(index, covered, q, int(k)) if index is not None else None
            if index is not None and hits is None:
                self._searcher, self._tail, index, covered = (None, 0), None, None, 0
        if self._tail is None:
            self._tail = self.read_rows(np.arange(covered, len(self), dtype=np.int64))
        scores, ids = ix.search(index, covered, self._tail, q, int(k), hits=hits)
        self.last_search = {"index": (self._manifest.get("index") or {}).get("type") if index is not None else None,
                            "indexed": int(covered), "scanned_exactly": int(len(self._tail)),
                            "note": self._search_note}
        return scores, self.keys_at(ids)

    def search_keys(self, keys: Sequence[str], k: int = 10, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of stored ``keys`` (the key itself left out unless ``exclude_self=False``)."""
        scores, found = self.search(self.get(keys), k + 1 if exclude_self else k)
        if not exclude_self:
            return scores, found
        out_s = np.full((len(keys), k), -np.inf, dtype=np.float32)
        out_k = np.full((len(keys), k), None, dtype=object)
        for row, key in enumerate(keys):
            keep = [j for j in range(found.shape[1]) if found[row, j] != key][:k]
            out_s[row, :len(keep)], out_k[row, :len(keep)] = scores[row, keep], found[row, keep]
        return out_s, out_k

    # -- writing ---------------------------------------------------------------------
    def writer(self, shard_size: int = DEFAULT_SHARD_SIZE, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
               update_index: bool = True) -> "StoreWriter":
        """The store's writer (a context manager holding the write lock).

        ``update_index=False`` leaves the index to its first use (:meth:`search` brings it up to
        date), so a long embedding job's memory does not grow with the store at its end.
        """
        if not self.writable:
            raise StoreError(f"feature store {self.path} was opened read-only",
                             hint="open it with FeatureStore.open(...) to write")
        return StoreWriter(self, shard_size, lock_timeout, update_index)

    def _refresh_index_if_far_behind(self) -> None:
        """Bring the index up to date when it misses ``LAZY_INDEX_ROWS`` or more rows; when a writer
        holds the lock or the store is read-only, the uncovered rows are scanned exactly this time."""
        entry = self._manifest.get("index") or {}
        behind = len(self) - int(entry.get("n_vectors", 0))
        if behind < LAZY_INDEX_ROWS:
            if behind and not os.access(self.path, os.W_OK):
                self._search_note = (f"the store is read-only and its index lacks {behind} vectors: "
                                     "searched them exactly in memory")
            return
        try:
            with StoreLock(self.path, timeout=0.0):
                self.refresh()
                from .indexing import update_index

                update_index(self)
        except StoreLockedError:
            return
        except StoreReadOnlyError:
            self._search_note = f"the store is read-only: {behind} vectors the index lacks were searched exactly"
            return
        self._searcher, self._tail = None, None

    def repair(self, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> dict[str, Any]:
        """Check every shard and the index afresh and drop what is damaged (one atomic manifest commit).

        Returns what was dropped; the items of dropped shards are embedded again by the next ``embed``.
        """
        from .repair import repair_store

        return repair_store(self, lock_timeout)

    def rebuild_index(self, config: ix.IndexConfig | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> dict:
        """Rebuild the FAISS index from the shards (retraining IVF); return the new index entry."""
        with StoreLock(self.path, lock_timeout):
            self.refresh()
            if config is not None:
                self.commit_manifest(dict(self._manifest, index_config=config.as_dict()))
            from .indexing import update_index

            update_index(self, rebuild=True)
        return self._manifest.get("index") or {}

    def commit_manifest(self, manifest: dict[str, Any] | None = None, *, add: Sequence[dict] = ()) -> None:
        """Commit (caller holds the lock) and adopt the result as this snapshot: ``manifest`` as a new
        checkpoint, or new shard entries ``add`` as one line of the manifest log (see :mod:`.manifest`)."""
        with self._lookup_lock:
            if manifest is not None:
                self._manifest = write_manifest(self.path, manifest)
            else:
                self._manifest = append_commit(self.path, self._manifest, add)
            self._searcher, self._tail = None, None
            self._lookups = {}  # the key indexes (self._key_indexes) and their maps stay: refreshed by their logs

    def sync_key_index(self) -> None:
        """Index the shards the key indexes do not cover yet (caller holds the write lock)."""
        with self._lookup_lock:
            epoch = self._manifest.get("key_index")
            if not epoch:
                return
            for kind, folder in ((sh.VECTORS, VECTOR_KEYS), (sh.ERRORS, ERROR_KEYS)):
                entries = [e for e in self._manifest["shards"] if e["kind"] == kind]
                keylookup.sync(self.path, folder, epoch, entries, self.shard_keys, self._key_indexes)
            self._lookups = {}

    # -- checks ------------------------------------------------------------------------
    def verify(self, deep: bool = True) -> VerifyReport:
        return verify_store(self, deep=deep)

    def info(self) -> dict[str, Any]:
        """Summary: backbone, fingerprint, dim, n_vectors, n_errors, bytes, shards, index type."""
        m = self._manifest
        index = m.get("index") or {}
        total = sum(s["bytes"] for s in m["shards"])
        total += sum(f.stat().st_size for f in (self.path / "index").glob("*") if f.is_file()) \
            if (self.path / "index").is_dir() else 0
        return {
            "path": str(self.path),
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "n_vectors": len(self),
            "n_errors": len(self.error_records()),
            "bytes": total,
            "shards": sum(1 for s in m["shards"] if s["kind"] == sh.VECTORS),
            "error_shards": sum(1 for s in m["shards"] if s["kind"] == sh.ERRORS),
            "index": index.get("type"),
            "index_vectors": index.get("n_vectors", 0),
            "generation": m["generation"],
            "updated_at": m["updated_at"],
        }


class StoreWriter:
    """Appends to a store under its exclusive lock; see :meth:`FeatureStore.writer`.

    Rows are buffered and committed as one shard every ``shard_size`` rows, on
    :meth:`commit`, and on a clean exit (which also brings the index up to date unless
    ``update_index=False``). Keys already in the store (vectors or error records) are skipped.

    It hashes no shard on opening: a look-up (``contains``, ``add``) checks the shards its hits are in,
    once per process, and drops damaged ones from the manifest (:attr:`dropped`, one warning each time),
    so their items count as missing and are written again. On opening it brings the key index up to
    date with the manifest (a store written before the key index existed is indexed then). On a store that
    cannot be written (read-only mount, no permission) it opens without the lock (:attr:`read_only`;
    nobody can be writing) and only work that adds something raises :class:`StoreReadOnlyError`.
    """

    def __init__(self, store: FeatureStore, shard_size: int, lock_timeout: float, update_index: bool = True) -> None:
        if shard_size < 1:
            raise StoreError(f"shard_size must be >= 1, got {shard_size}", hint="use the default (4096)")
        self.store = store
        self.shard_size = int(shard_size)
        self.update_index = update_index
        self._lock = StoreLock(store.path, lock_timeout)
        self._keys: list[str] = []
        self._refs: list[str | None] = []
        self._vectors: list[np.ndarray] = []
        self._pending: dict[str, None] = {}
        self._errors: list[ErrorRecord] = []
        self._open = False
        self.added = 0
        self.skipped = 0
        self.read_only = False
        self.dropped: list[dict[str, Any]] = []

    def __enter__(self) -> "StoreWriter":
        try:
            self._lock.acquire()
        except StoreReadOnlyError:
            self.read_only = True
            self.store.refresh()
            self._open = True
            return self
        try:
            self.store.refresh()
            clean_temp_files(self.store.path)
            from .repair import remove_orphans

            store = self.store
            if not store.manifest.get("key_index"):  # a store from before the key index (version 1): migrate
                store.commit_manifest(dict(store.manifest, key_index=new_epoch()))
            elif log_needs_compaction(store.path, store.manifest):  # a killed writer's log, maybe torn
                store.commit_manifest(store.manifest)
            remove_orphans(store.path, store.manifest)
            store.sync_key_index()
            store._on_damage = self._drop_damaged
        except BaseException:
            self._lock.release()
            raise
        self._open = True
        return self

    def _drop_damaged(self) -> None:
        """Drop the damaged shards a look-up ran into (one manifest commit) and say so."""
        from .repair import drop_shards

        dropped = drop_shards(self.store, dict(self.store._damaged))
        self.dropped.extend(dropped)
        _warn(f"feature store {self.store.path}: dropped {len(dropped)} damaged shard(s) "
              f"({', '.join(d['file'] + ': ' + d['reason'] for d in dropped[:3])}); "
              f"their {sum(d['rows'] for d in dropped)} item(s) are embedded again")

    def require_writable(self, n_items: int) -> None:
        """Raise :class:`StoreReadOnlyError` when ``n_items`` items need writing to a read-only store."""
        if self.read_only and n_items:
            store = self.store
            damage = f" (damaged shard(s): {store._damage_summary()})" if store._damaged else ""
            raise read_only_error(store.path, f"storing {n_items} item(s) that are not cached{damage}")

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self.read_only:
                self.commit()
                if self.update_index:
                    from .indexing import update_index

                    update_index(self.store)
                if self.store.manifest.get("log_lines"):  # fold this session's log into a checkpoint
                    self.store.commit_manifest(self.store.manifest)
        finally:
            self._open = False
            self.store._on_damage = None
            self._lock.release()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the store writer is not open", hint="use it as `with store.writer() as w:`")

    def add(self, keys: Sequence[str], vectors: np.ndarray, refs: Sequence[str | None] | None = None, *,
            fingerprint: str | None = None) -> int:
        """Queue vectors for ``keys``; return how many were new (others are skipped)."""
        self._check_open()
        store = self.store
        if fingerprint is not None and fingerprint != store.fingerprint:
            raise DimensionMismatchError(
                f"vectors from backbone fingerprint {fingerprint} offered to feature store {store.fingerprint}",
                hint="open the store of that fingerprint: settings.features_dir / fingerprint")
        vectors = np.asarray(vectors)
        keys = list(keys)
        if vectors.ndim != 2 or vectors.shape[1] != store.dim:
            raise DimensionMismatchError(
                f"vectors of shape {vectors.shape} offered to feature store {store.path} ({store.dim}-d)",
                hint="the vectors come from another backbone; use its own store")
        if len(keys) != len(vectors):
            raise StoreError(f"{len(keys)} keys for {len(vectors)} vectors", hint="pass one key per vector row")
        refs = [None] * len(keys) if refs is None else [None if r is None else str(r) for r in refs]
        if len(refs) != len(keys):
            raise StoreError(f"{len(refs)} refs for {len(keys)} keys", hint="pass one ref per key (or none)")
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            named = [keys[i] for i in np.nonzero(bad)[0]]
            raise StoreError(f"{len(named)} vector(s) contain NaN or Inf: {_short(named)}",
                             hint="record these items with add_errors() instead of storing their vectors")
        if store.unit_norm and len(vectors):
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
            off = (np.abs(norms - 1.0) > integrity.NORM_TOLERANCE) & (norms != 0.0)
            if off.any():
                named = [keys[i] for i in np.nonzero(off)[0]]
                raise StoreError(f"{len(named)} vector(s) are not unit length, but feature store {store.path} holds "
                                 f"a normalising backbone's vectors: {_short(named)}",
                                 hint="the backbone declares normalize=true: make its graph L2-normalise its "
                                      "output, or declare normalize=false (a new fingerprint and store)")
        present = store.contains(keys, include_errors=False)
        take = []
        for i, key in enumerate(keys):
            if not isinstance(key, str) or not key:
                raise StoreError(f"invalid key {key!r} at row {i}", hint="keys are non-empty content-hash strings")
            if not present[i] and key not in self._pending:
                self._pending[key] = None
                take.append(i)
        self.require_writable(len(take))
        self.skipped += len(keys) - len(take)
        if take:
            self._keys.extend(keys[i] for i in take)
            self._refs.extend(refs[i] for i in take)
            self._vectors.append(np.asarray(vectors[take], dtype=np.float32))
            self.added += len(take)
        if len(self._keys) >= self.shard_size:
            self._commit_vectors(full_only=True)
        return len(take)

    def add_errors(self, records: Iterable[ErrorRecord]) -> int:
        """Queue error records (skipping keys already stored or queued); return how many were new."""
        self._check_open()
        records = list(records)
        known = self.store.contains([r.key for r in records])
        queued = {r.key for r in self._errors}
        new = []
        for record, have in zip(records, known):
            if not have and record.key not in self._pending and record.key not in queued:
                queued.add(record.key)
                new.append(record)
        self.require_writable(len(new))
        self._errors.extend(new)
        return len(new)

    def commit(self) -> None:
        """Write everything queued: one shard per ``shard_size`` rows, then the manifest, per shard."""
        self._check_open()
        self._commit_vectors(full_only=False)
        if self._errors:
            records = self._errors
            table = sh.error_table([r.key for r in records], [r.ref for r in records],
                                   [r.reason for r in records], [r.stage for r in records])
            self._write_shard(sh.ERRORS, table, len(records))
            self._errors = []

    def _commit_vectors(self, full_only: bool) -> None:
        while self._keys and (len(self._keys) >= self.shard_size or not full_only):
            n = min(self.shard_size, len(self._keys))
            vectors = np.concatenate(self._vectors) if len(self._vectors) > 1 else self._vectors[0]
            keys, refs = self._keys[:n], self._refs[:n]
            self._write_shard(sh.VECTORS, sh.vector_table(keys, refs, vectors[:n]), n)
            self._keys, self._refs = self._keys[n:], self._refs[n:]
            self._vectors = [vectors[n:]] if len(vectors) > n else []
            for key in keys:
                self._pending.pop(key, None)

    def _write_shard(self, kind: str, table, rows: int) -> None:
        store = self.store
        seq = len(store.manifest["shards"]) + 1
        try:
            entry = sh.write_shard_file(store.path, kind, table, prefix=f"{seq:06d}")
            pause_point("store-shard-written", file=entry["file"])
            self.commit_shard_entries([entry])
            pause_point("store-committed", file=entry["file"], rows=store.manifest["n_vectors"])
        except OSError as exc:
            raise StoreError(
                f"could not commit a {rows}-row {kind} shard to feature store {store.path}: {exc.strerror or exc}",
                hint="free disk space (or fix permissions) and re-run; committed shards are intact and "
                     "the re-run resumes from them") from exc

    def commit_shard_entries(self, entries: Sequence[dict[str, Any]]) -> None:
        """Make shard files written by :func:`shards.write_shard_file` part of the store, in one commit.

        The one way shards enter the manifest: this writer's own shards and those staged by others
        (Ray workers). Each file must exist with the size its entry names (its sha256 is checked when
        first read, as for every shard). A key stored twice (two workers met the same content) keeps
        both rows; they hold the same vector, and lookups take one of them.
        """
        self._check_open()
        store = self.store
        if not entries:
            return
        self.require_writable(sum(int(e["rows"]) for e in entries))
        for entry in entries:
            path = store.path / entry["file"]
            if entry.get("kind") not in (sh.VECTORS, sh.ERRORS) or not str(entry["file"]).startswith("shards/"):
                raise StoreError(f"feature store {store.path}: {entry!r} is not a shard entry",
                                 hint="pass the entries shards.write_shard_file() returned")
            size = path.stat().st_size if path.is_file() else -1
            if size != int(entry["bytes"]):
                found = "missing" if size < 0 else f"{size} bytes, not {entry['bytes']}"
                raise StoreError(f"feature store {store.path}: staged shard {entry['file']} is {found}",
                                 hint="the worker that wrote it did not finish; re-run the job to embed its items again")
        store.commit_manifest(add=[dict(e) for e in entries])  # one log line: the commit point
        pause_point("store-manifest-logged", generation=store.manifest["generation"])
        store.sync_key_index()


__all__ = ["ErrorRecord", "FeatureStore", "StoreWriter", "VerifyReport"]
