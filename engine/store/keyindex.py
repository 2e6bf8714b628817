"""A key index for stores of 100M+ items: sorted, memory-mapped segments of 16-byte key digests, merged LSM-style.

Layout of ``<dir>/``::

    log                      one JSON line per commit: {"seq", "add": [segment names], "remove": [...],
                             "meta": {...}}; a first line {"checkpoint": [...], "meta"} when compacted
    <seq>-<token>.keys.npy   sorted 16-byte digests (numpy ``S16``), memory-mapped when read
    <seq>-<token>.vals.npy   one int64 value per digest (the store's row id)
    <seq>-<token>.hi.npy     the digests' first 8 bytes as native uint64 (same order): what the binary
                             search runs on (numpy's searchsorted on ``S16`` is ~10x slower)

A commit writes its segment files (atomically) and then appends its line to ``log`` with an fsync:
the line is the commit point. A torn last line (a writer killed mid-append) is ignored, so a reader
sees every commit before it or none of its own; segment files no line names are orphans
(:meth:`KeyIndex.remove_orphans`). The caller serialises writers (the store's lock).

Looking up a batch of keys maps each live segment and binary-searches it (``np.searchsorted``):
memory is that of the batch plus the pages the searches touch, not of the index. Segments are merged
size-tiered: whenever :data:`FANOUT` segments share a tier (sizes within a factor of ``FANOUT``), they
are merged by a streaming k-way merge into one (memory of one block per input), and the log records
the swap as one line. With 4,096-key commits, 100M keys settle into about ``FANOUT * log_FANOUT(n / 4096)``
(~40) segments, and the log is compacted to a checkpoint line every :data:`LOG_COMPACT_LINES` lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import StoreError
from .atomic import FS, TMP_MARK, clean_temp_files, fsync_dir, write_bytes_atomic

FANOUT = 8
LOG_COMPACT_LINES = 1000
MERGE_RACE_RETRIES = 20  # look-ups racing a writer's merges: re-read the log this often before giving up
MERGE_BLOCK = 1 << 15  # digests read per input per merge step: a step holds FANOUT blocks (~35 MB at most; 1 << 18 took ~185 MB at 8 x 262k keys)
#: keys looked up before the pages the searches touched are dropped from this process (bounds its RSS)
RELEASE_PROBES = 1 << 14
#: segments of at least this many keys drop the pages a look-up touched as soon as it has searched them: the
#: index pages in RSS are then those of one big segment's search (bounded by the batch), not of all segments
DROP_AFTER_SEARCH_KEYS = 1 << 17
#: segments of fewer keys have no ``.hi.npy`` file: its 8 B a key are derived in memory when mapped
HI_FILE_KEYS = 1 << 16
LOG = "log"
DIGEST = np.dtype("S16")


def digests(keys: Iterable[str]) -> np.ndarray:
    """16-byte blake2b digests of content keys (dtype ``S16``), in order."""
    return np.fromiter((hashlib.blake2b(k.encode(), digest_size=16).digest() for k in keys), dtype=DIGEST)


@dataclass
class Segment:
    name: str  # "<seq>-<token>"; files <name>.keys.npy and <name>.vals.npy
    size: int

    def arrays(self, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            keys = np.load(folder / f"{self.name}.keys.npy", mmap_mode="r")
            vals = np.load(folder / f"{self.name}.vals.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise StoreError(f"key index segment {folder / self.name} cannot be read: {exc}",
                             hint="run `headstart cache verify`; the key index can be rebuilt from the shards") from None
        if keys.dtype != DIGEST or len(keys) != self.size or len(vals) != self.size:
            raise StoreError(f"key index segment {folder / self.name} does not match its log record",
                             hint="run `headstart cache verify`; the key index can be rebuilt from the shards")
        return keys, vals


def _hi(keys: np.ndarray) -> np.ndarray:
    """First 8 bytes of each digest as a native uint64, read big-endian so that it sorts like the digests."""
    return np.ascontiguousarray(keys, dtype=DIGEST).view(">u8")[::2].astype(np.uint64)


def _random_access(array: np.ndarray) -> np.ndarray:
    """Tell the kernel a mapped array is read at random (``MADV_RANDOM``: no fault-around or read-ahead), so a
    look-up brings in the pages its binary searches touch, not 64 KiB around each."""
    import mmap

    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        try:
            handle.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError):
            pass
    return array


def _drop_pages(array: np.ndarray) -> None:
    import mmap

    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            handle.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _segment_hi(folder: Path, segment: "Segment", keys: np.ndarray) -> np.ndarray:
    path = folder / f"{segment.name}.hi.npy"
    try:
        hi = _random_access(np.load(path, mmap_mode="r"))
    except FileNotFoundError:
        return _hi(keys)  # a segment written before the .hi file existed: derived in memory
    except (OSError, ValueError) as exc:
        raise StoreError(f"key index segment {path} cannot be read: {exc}",
                         hint="run `headstart cache verify`; the key index can be rebuilt from the shards") from None
    if len(hi) != segment.size:
        raise StoreError(f"key index segment {path} does not match its log record",
                         hint="run `headstart cache verify`; the key index can be rebuilt from the shards")
    return hi


class KeyIndex:
    """A snapshot of the key index at ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.segments: list[Segment] = []
        self.meta: dict = {}  # the caller's record of what the index covers (the last commit's ``meta``)
        self._lines = 0
        self._seq = 0
        self._maps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._views: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._probes = 0
        self._read_stat: tuple[int, int, int] | None = None
        self.reload()

    # -- reading --------------------------------------------------------------------
    def refresh(self) -> "KeyIndex":
        """:meth:`reload` when the log changed since it was last read (one ``stat`` otherwise)."""
        if self._log_stat() != self._read_stat:
            self.reload()
        return self

    def _log_stat(self) -> tuple[int, int, int] | None:
        try:
            info = (self.folder / LOG).stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    def reload(self) -> "KeyIndex":
        """Re-read the log (a torn last line is ignored); segments still live stay mapped."""
        live: dict[str, int] = {}
        meta: dict = {}
        lines = 0
        self._read_stat = self._log_stat()
        try:
            text = (self.folder / LOG).read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.split("\n"):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the torn tail of a killed append (or an empty line)
            lines += 1
            meta = record.get("meta", meta)
            if "checkpoint" in record:
                live = {name: size for name, size in record["checkpoint"]}
                continue
            for name in record.get("remove", []):
                live.pop(name, None)
            for name, size in record.get("add", []):
                live[name] = size
            self._seq = max(self._seq, int(record.get("seq", 0)))
        self.segments = [Segment(name, size) for name, size in live.items()]
        for gone in set(self._maps) - set(live):
            self._maps.pop(gone, None)
            self._views.pop(gone, None)
        self.meta = meta
        self._lines = lines
        self._seq = max([self._seq, *(int(s.name.split("-")[0]) for s in self.segments)])
        return self

    def __len__(self) -> int:
        return sum(s.size for s in self.segments)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value of each digest in ``keys`` (``S16``), -1 where absent; memory of the batch, not the index.

        Segments stay memory-mapped between calls (opening ~40 maps per call would dominate small
        batches) until :data:`RELEASE_PROBES` keys have been looked up: then they are unmapped, so the
        index pages the searches touched leave this process (bounded RSS whatever the index size).
        A segment a concurrent merge removed meanwhile makes the snapshot re-read the log and look up again
        (while the log keeps changing, up to :data:`MERGE_RACE_RETRIES` times).
        """
        keys = np.asarray(keys, dtype=DIGEST)
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(keys):
            return out
        order = np.argsort(keys, kind="stable")  # sorted probes touch each segment's pages in order
        probe = keys[order]
        for attempt in range(MERGE_RACE_RETRIES):
            try:
                self._lookup_sorted(probe, order, out)
                break
            except StoreError:  # a segment gone: retried while concurrent merges keep changing the log
                if attempt == MERGE_RACE_RETRIES - 1 or not self._reload_if_changed():
                    raise
                out[:] = -1
        self._probes += len(keys)
        if self._probes >= RELEASE_PROBES:
            self.drop_pages()
        return out

    def _lookup_sorted(self, probe: np.ndarray, order: np.ndarray, out: np.ndarray) -> None:
        probe_hi = _hi(probe)
        for segment in self.segments:
            maps = self._maps.get(segment.name)
            if maps is None:
                keys, vals = (_random_access(a) for a in segment.arrays(self.folder))
                hi = _segment_hi(self.folder, segment, keys)
                maps = self._maps[segment.name] = (keys, vals, hi)
                self._views[segment.name] = tuple(a.view(np.ndarray) for a in maps)  # no memmap subclass per index
            maps = self._views[segment.name]
            seg_keys, seg_vals, seg_hi = maps
            n = len(seg_keys)
            at = np.searchsorted(seg_hi, probe_hi)
            pending = np.flatnonzero(at < n)
            # only probes whose first 8 bytes are there read the digests (their pages stay untouched otherwise)
            pending = pending[seg_hi[at[pending]] == probe_hi[pending]]
            while len(pending):  # usually one pass; more only where two digests share their first 8 bytes
                pos = at[pending]
                match = seg_keys[pos] == probe[pending]
                target, found = order[pending[match]], seg_vals[pos[match]]
                earlier = out[target]  # a digest in two segments (stored twice): the smallest value wins
                out[target] = np.where(earlier >= 0, np.minimum(earlier, found), found)
                rest = pending[~match]
                step = at[rest] + 1
                inside = step < n
                rest, step = rest[inside], step[inside]
                same = seg_hi[step] == probe_hi[rest]
                pending = rest[same]
                at[pending] = step[same]
            if segment.size >= DROP_AFTER_SEARCH_KEYS:  # a big segment: its touched pages leave RSS right away
                for array in self._maps[segment.name]:
                    _drop_pages(array)

    def _reload_if_changed(self) -> bool:
        before = [s.name for s in self.segments]
        self.reload()
        return [s.name for s in self.segments] != before

    def release(self) -> None:
        """Unmap every segment (the next lookup maps them again)."""
        self._maps, self._views = {}, {}
        self._probes = 0

    def drop_pages(self) -> None:
        """Let the pages the searches touched leave this process's memory (``MADV_DONTNEED``; they stay in
        the page cache), keeping the maps: RSS of one look-up batch, whatever the index size."""
        for arrays in self._maps.values():
            for array in arrays:
                _drop_pages(array)
        self._probes = 0

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.lookup(keys) >= 0

    # -- writing (the caller holds the store's write lock) ----------------------------------
    def commit(self, keys: np.ndarray, values: np.ndarray, meta: dict | None = None) -> None:
        """Add digests ``keys`` with int64 ``values`` as one segment, then merge tiers that are full.

        ``meta`` (JSON) is kept with the commit line: :attr:`meta` of a later snapshot is the last one.
        """
        keys = np.asarray(keys, dtype=DIGEST)
        values = np.asarray(values, dtype=np.int64)
        if keys.shape != values.shape or keys.ndim != 1:
            raise StoreError(f"key index commit: {keys.shape} keys for {values.shape} values",
                             hint="pass one int64 value per 16-byte digest")
        if not len(keys):
            if meta is not None:
                self._append({"add": [], "meta": meta})
            return
        order = np.lexsort((values, keys))  # by digest, then value: the first match is the smallest value
        name = self._new_name()
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.folder / f"{name}.keys.npy", _npy(keys[order]))
        write_bytes_atomic(self.folder / f"{name}.vals.npy", _npy(values[order]))
        if len(keys) >= HI_FILE_KEYS:  # a small segment's is derived when it is mapped (one fsync less per commit)
            write_bytes_atomic(self.folder / f"{name}.hi.npy", _npy(_hi(keys[order])))
        self._append({"add": [[name, int(len(keys))]], **({"meta": meta} if meta is not None else {})})
        self.merge()

    def merge(self) -> None:
        """Merge any :data:`FANOUT` segments of one size tier into one (repeatedly), each swap one log line."""
        while True:
            tiers: dict[int, list[Segment]] = {}
            for segment in self.segments:
                tiers.setdefault(_tier(segment.size), []).append(segment)
            full = [group for group in tiers.values() if len(group) >= FANOUT]
            if not full:
                break
            group = sorted(full[0], key=lambda s: s.name)[:FANOUT]
            merged = self._merge_files(group)
            self._append({"add": [[merged.name, merged.size]], "remove": [s.name for s in group]})
            self.release()
            for segment in group:
                for suffix in (".keys.npy", ".vals.npy", ".hi.npy"):
                    (self.folder / f"{segment.name}{suffix}").unlink(missing_ok=True)
        if self._lines > LOG_COMPACT_LINES:
            self._checkpoint()

    def remove_orphans(self) -> list[str]:
        """Delete segment files that no log line names and temp files (left by a killed writer; call it
        under the write lock); return their names."""
        live = {s.name for s in self.segments}
        removed = [p.name for p in clean_temp_files(self.folder)]
        for path in self.folder.glob("*.npy"):
            if path.name.split(".")[0] not in live:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    # -- internals ------------------------------------------------------------------------
    def _new_name(self) -> str:
        self._seq += 1
        return f"{self._seq:09d}-{secrets.token_hex(4)}"

    def _append(self, record: dict) -> None:
        """Append one commit line and fsync it: the commit point."""
        record = {"seq": self._seq, **record}
        path = self.folder / LOG
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            FS.write(fd, (json.dumps(record) + "\n").encode())
            FS.fsync(fd)
        finally:
            os.close(fd)
        if self._lines == 0:
            fsync_dir(self.folder)
        self._lines += 1
        self._read_stat = self._log_stat()  # the caller holds the write lock: nobody else appended
        self.meta = record.get("meta", self.meta)
        live = {s.name: s for s in self.segments}
        for name in record.get("remove", []):
            live.pop(name, None)
        for name, size in record.get("add", []):
            live[name] = Segment(name, size)
        self.segments = list(live.values())

    def _checkpoint(self) -> None:
        """Replace the log by one checkpoint line (atomically)."""
        data = json.dumps({"seq": self._seq, "checkpoint": [[s.name, s.size] for s in self.segments],
                           "meta": self.meta}) + "\n"
        write_bytes_atomic(self.folder / LOG, data.encode())
        self._lines = 1
        self._read_stat = self._log_stat()

    def _merge_files(self, group: Sequence[Segment]) -> Segment:
        """Streaming k-way merge of sorted segments into a new one: blocks read with ``pread`` and appended
        with ``write`` (never mapped), so memory is one block per input whatever the segments' size."""
        for segment in group:
            segment.arrays(self.folder)  # validates each segment against its log record
        inputs = [(_NpyReader(self.folder / f"{s.name}.keys.npy"), _NpyReader(self.folder / f"{s.name}.vals.npy"))
                  for s in group]
        total = sum(s.size for s in group)
        name = self._new_name()
        paths = {kind: self.folder / f".{name}.{kind}.npy{TMP_MARK}{os.getpid()}" for kind in ("keys", "vals", "hi")}
        outs = {"keys": _NpyWriter(paths["keys"], DIGEST, total), "vals": _NpyWriter(paths["vals"], np.int64, total),
                "hi": _NpyWriter(paths["hi"], np.uint64, total)}
        try:
            cursors = [0] * len(inputs)
            sizes = [s.size for s in group]
            written = 0
            while written < total:
                blocks = [(k.read(c, MERGE_BLOCK), v.read(c, MERGE_BLOCK)) for (k, v), c in zip(inputs, cursors)]
                # everything up to the smallest last key of the unfinished inputs' blocks can be emitted now
                bound = min((k[-1] for (k, _), size, c in zip(blocks, sizes, cursors)
                             if len(k) and c + len(k) < size), default=None)
                parts_k, parts_v = [], []
                for i, (k, v) in enumerate(blocks):
                    take = len(k) if bound is None else int(np.searchsorted(k, bound, side="right"))
                    parts_k.append(k[:take])
                    parts_v.append(v[:take])
                    cursors[i] += take
                keys, vals = np.concatenate(parts_k), np.concatenate(parts_v)
                order = np.lexsort((vals, keys))  # equal digests: smallest value first (see commit)
                outs["keys"].write(keys[order])
                outs["vals"].write(vals[order])
                outs["hi"].write(_hi(keys[order]))
                written += len(keys)
        finally:
            for k, v in inputs:
                k.close()
                v.close()
        for kind, out in outs.items():
            out.finish()
            FS.replace(paths[kind], self.folder / f"{name}.{kind}.npy")
        fsync_dir(self.folder)
        return Segment(name, total)


class _NpyReader:
    """Reads rows of a 1-D ``.npy`` file with ``pread`` (no mapping: nothing stays in this process's RSS)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            self.offset, self.dtype, self.size = fh.tell(), dtype, int(shape[0])

    def read(self, start: int, count: int) -> np.ndarray:
        count = max(0, min(count, self.size - start))
        width = self.dtype.itemsize
        data = os.pread(self.fd, count * width, self.offset + start * width)
        return np.frombuffer(data, dtype=self.dtype)

    def close(self) -> None:
        os.close(self.fd)


class _NpyWriter:
    """Writes a 1-D ``.npy`` file of ``size`` rows block by block, then fsyncs it."""

    def __init__(self, path: Path, dtype: Any, size: int) -> None:
        self.fh = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (size,)}
        np.lib.format.write_array_header_1_0(self.fh, header)

    def write(self, block: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(block).tobytes())

    def finish(self) -> None:
        self.fh.flush()
        FS.fsync(self.fh.fileno())
        self.fh.close()


def _tier(size: int) -> int:
    """Size tier: segments within a factor of FANOUT of each other share one."""
    return int(np.log(max(size, 1)) / np.log(FANOUT))


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


__all__ = ["FANOUT", "KeyIndex", "Segment", "digests"]
