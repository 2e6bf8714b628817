"""A key index for stores of 100M+ items: sorted, memory-mapped segments of 16-byte key digests, merged LSM-style.

Layout of ``<dir>/``::

    log                      one JSON line per commit: {"seq", "add": [segment names], "remove": [...],
                             "meta": {...}}; a first line {"checkpoint": [...], "meta"} when compacted
    <seq>-<token>.keys.npy   sorted 16-byte digests (numpy ``S16``), memory-mapped when read
    <seq>-<token>.vals.npy   one int64 value per digest (the store's row id)
    <seq>-<token>.hi.npy     the digests' first 8 bytes as native uint64 (same order): what the binary
                             search runs on (numpy's searchsorted on ``S16`` is ~10x slower)
    <seq>-<token>.filter.npy a blocked Bloom filter of the digests (:mod:`.keyfilter`): segments it rules
                             out are not searched (segments of at least :data:`FILTER_KEYS` keys)

A commit writes its segment files (atomically) and then appends its line to ``log`` with an fsync:
the line is the commit point. A torn last line (a writer killed mid-append) is ignored, so a reader
sees every commit before it or none of its own; segment files no line names are orphans
(:meth:`KeyIndex.remove_orphans`). The caller serialises writers (the store's lock).

Looking up a batch of keys maps each live segment, asks its filter which keys may be there and
binary-searches only those (``np.searchsorted``): a key costs one search in the segment that holds it (plus
~1 % false positives) and a 64-byte filter block in each other one. Memory is that of the batch plus the
pages the searches touch, not of the index: a large segment is searched in slices of :data:`SLICE_KEYS`
keys' worth of digest range, and each slice's pages leave the process before the next (the page cache maps
whole large folios per fault, so one search of a 2M-key segment would otherwise map all of its 64 MB). Segments are merged
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
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import StoreError
from ..faultpoints import pause_point
from . import keyfilter
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
#: segments of at least this many keys have a filter file (smaller ones are searched: a few cache-resident pages)
FILTER_KEYS = HI_FILE_KEYS
#: a large segment is searched slice by slice, each slice the digests of about this many of its keys; the pages
#: a slice touched are dropped before the next: RSS of one slice (~8 MB of arrays), whatever the segment's size
SLICE_KEYS = 1 << 18
#: the filter of a large segment is read in slices of this many keys' blocks (~3 MB of filter)
FILTER_SLICE_KEYS = 1 << 21
#: filters are read into memory (no page faults per look-up) up to this many bytes per index (10M keys take
#: ~15 MB); the filters of further segments are mapped and their pages dropped after each look-up
FILTER_MEMORY = 48 << 20
#: keys looked up per step of one call (a commit of 1M keys looks its keys up too)
LOOKUP_CHUNK = 1 << 16
SUFFIXES = (".keys.npy", ".vals.npy", ".hi.npy", ".filter.npy")
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
    _advise(array, "MADV_RANDOM")
    return array


def _drop_pages(array: np.ndarray) -> None:
    """Drop the pages of a mapped array from this process's RSS (``MADV_DONTNEED``; the page cache keeps them)."""
    _advise(array, "MADV_DONTNEED")


def _advise(array: np.ndarray, advice: str) -> None:
    """``madvise(advice)`` on the mapping behind ``array``, where it is a memory map and the platform has it."""
    import mmap

    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, advice):
        try:
            handle.madvise(getattr(mmap, advice))
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


def _segment_filter(folder: Path, segment: "Segment", resident: bool) -> np.ndarray | None:
    """The segment's filter, flat uint64: read into memory (``resident``) or mapped; None where it has none
    (small, or written before filters existed: :meth:`KeyIndex.add_filters`) or where the file does not
    match its segment (then the segment is searched for every key, as without a filter)."""
    if segment.size < FILTER_KEYS:
        return None
    try:
        words = np.load(folder / f"{segment.name}.filter.npy", mmap_mode=None if resident else "r")
    except (OSError, ValueError):
        return None
    if words.dtype != np.uint64 or words.shape != (keyfilter.block_count(segment.size) * keyfilter.WORDS,):
        return None
    return words if resident else _random_access(words)


def _slices(hi: np.ndarray, size: int, keys_per_slice: int) -> list[slice]:
    """Runs of the sorted probes ``hi`` that fall in each of the ~``size / keys_per_slice`` equal digest ranges
    of a segment of ``size`` keys (empty runs left out)."""
    count = -(-size // keys_per_slice)
    if count <= 1:
        return [slice(0, len(hi))] if len(hi) else []
    bounds = np.searchsorted(keyfilter.blocks_of(hi, count), np.arange(count + 1)).tolist()
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _tracked_after(tracked: bool, record: dict) -> bool:
    """Whether the shadowed values are complete after log line ``record``: a scan makes them so, a commit
    that did not record its own (an older writer's) makes them incomplete, merges change nothing."""
    if record.get("scan"):
        return True
    if record.get("add") and not record.get("remove") and not record.get("tracked"):
        return False
    return tracked


class KeyIndex:
    """A snapshot of the key index at ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.segments: list[Segment] = []
        self.meta: dict = {}  # the caller's record of what the index covers (the last commit's ``meta``)
        #: values whose digest also has a smaller value (a key stored twice): a look-up never answers them
        self.shadowed: set[int] = set()
        #: whether :attr:`shadowed` is complete: every commit since the index began recorded its own (an index
        #: written before that is scanned once by a writer, :meth:`track_shadowed`)
        self.tracked = True
        self._lines = 0
        self._seq = 0
        self._maps: dict[str, tuple[np.ndarray, ...]] = {}  # keys, vals, hi[, filter]: what drop_pages drops
        self._views: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._filters: dict[str, np.ndarray] = {}  # filters held in memory (FILTER_MEMORY), kept across release()
        #: look-up counters since this snapshot was made: keys asked, (key, segment) pairs the filters ruled
        #: out, pairs searched, slices searched (each one's pages dropped after it)
        self.stats = {"keys": 0, "filtered": 0, "searched": 0, "slices": 0}
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
        shadowed: set[int] = set()
        tracked = True
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
                shadowed = set(record.get("shadowed", []))
                tracked = bool(record.get("tracked"))
                continue
            shadowed.update(record.get("shadowed", []))
            tracked = _tracked_after(tracked, record)
            for name in record.get("remove", []):
                live.pop(name, None)
            for name, size in record.get("add", []):
                live[name] = size
            self._seq = max(self._seq, int(record.get("seq", 0)))
        self.segments = [Segment(name, size) for name, size in live.items()]
        for gone in set(self._maps) - set(live):
            self._maps.pop(gone, None)
            self._views.pop(gone, None)
        for gone in set(self._filters) - set(live):
            del self._filters[gone]
        self.meta = meta
        self.shadowed = shadowed
        self.tracked = tracked
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
        if len(keys) > LOOKUP_CHUNK:  # a filter check holds 128 B a key (its masks and blocks)
            return np.concatenate([self.lookup(keys[lo:lo + LOOKUP_CHUNK]) for lo in range(0, len(keys), LOOKUP_CHUNK)])
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

    def _mapped(self, segment: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        views = self._views.get(segment.name)
        if views is None:
            keys, vals = (_random_access(a) for a in segment.arrays(self.folder))
            hi = _segment_hi(self.folder, segment, keys)
            words = self._filters.get(segment.name)
            if words is None:
                held = sum(w.nbytes for w in self._filters.values())
                resident = held + keyfilter.block_count(segment.size) * keyfilter.WORDS * 8 <= FILTER_MEMORY
                words = _segment_filter(self.folder, segment, resident)
                if resident and words is not None:
                    self._filters[segment.name] = words
            mapped = words is not None and segment.name not in self._filters
            self._maps[segment.name] = (keys, vals, hi) + ((words,) if mapped else ())
            views = self._views[segment.name] = (  # plain ndarrays: no memmap subclass per index operation
                keys.view(np.ndarray), vals.view(np.ndarray), hi.view(np.ndarray),
                None if words is None else words.view(np.ndarray).reshape(-1, keyfilter.WORDS))
        return views

    def _lookup_sorted(self, probe: np.ndarray, order: np.ndarray, out: np.ndarray) -> None:
        probe_hi = _hi(probe)
        probe_masks: np.ndarray | None = None
        stats = self.stats
        stats["keys"] += len(probe)
        for segment in self.segments:
            seg_keys, seg_vals, seg_hi, words = self._mapped(segment)
            big = segment.size >= DROP_AFTER_SEARCH_KEYS  # its touched pages leave RSS slice by slice
            if words is None:
                parts = [np.arange(len(probe))[part] for part in _slices(probe_hi, segment.size, SLICE_KEYS)]
            else:
                if probe_masks is None:
                    probe_masks = keyfilter.masks(keyfilter.low_half(probe))
                parts = []
                for part in _slices(probe_hi, segment.size, FILTER_SLICE_KEYS):
                    maybe = part.start + np.flatnonzero(keyfilter.may_contain(words, probe_hi[part], probe_masks[part]))
                    if big and len(self._maps[segment.name]) > 3:  # a mapped filter (beyond FILTER_MEMORY)
                        _drop_pages(self._maps[segment.name][3])
                    stats["filtered"] += (part.stop - part.start) - len(maybe)
                    parts += [maybe[run] for run in _slices(probe_hi[maybe], segment.size, SLICE_KEYS)]
            for pending in parts:
                stats["searched"] += len(pending)
                stats["slices"] += 1
                self._search(seg_keys, seg_vals, seg_hi, probe, probe_hi, pending, order, out)
                if big:
                    for array in self._maps[segment.name][:3]:
                        _drop_pages(array)

    @staticmethod
    def _search(seg_keys: np.ndarray, seg_vals: np.ndarray, seg_hi: np.ndarray, probe: np.ndarray,
                probe_hi: np.ndarray, pending: np.ndarray, order: np.ndarray, out: np.ndarray) -> None:
        """Binary-search the sorted probes ``pending`` (positions in ``probe``) in one segment; fill ``out``."""
        n = len(seg_keys)
        at = np.searchsorted(seg_hi, probe_hi[pending])
        inside = at < n
        pending, at = pending[inside], at[inside]
        # only probes whose first 8 bytes are there read the digests (their pages stay untouched otherwise)
        same = seg_hi[at] == probe_hi[pending]
        pending, at = pending[same], at[same]
        while len(pending):  # usually one pass; more only where two digests share their first 8 bytes
            match = seg_keys[at] == probe[pending]
            target, found = order[pending[match]], seg_vals[at[match]]
            earlier = out[target]  # a digest in two segments (stored twice): the smallest value wins
            out[target] = np.where(earlier >= 0, np.minimum(earlier, found), found)
            rest, step = pending[~match], at[~match] + 1
            inside = step < n
            rest, step = rest[inside], step[inside]
            same = seg_hi[step] == probe_hi[rest]
            pending, at = rest[same], step[same]

    def _reload_if_changed(self) -> bool:
        before = [s.name for s in self.segments]
        self.reload()
        return [s.name for s in self.segments] != before

    def release(self) -> None:
        """Unmap every segment (the next lookup maps them again); filters held in memory stay (segments are
        immutable; those of removed segments go when the log says so)."""
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
        shadowed = self._shadowed_by(keys[order], values[order])
        name = self._new_name()
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.folder / f"{name}.keys.npy", _npy(keys[order]))
        write_bytes_atomic(self.folder / f"{name}.vals.npy", _npy(values[order]))
        if len(keys) >= HI_FILE_KEYS:  # a small segment's is derived when it is mapped (one fsync less per commit)
            hi = _hi(keys[order])
            write_bytes_atomic(self.folder / f"{name}.hi.npy", _npy(hi))
            if len(keys) >= FILTER_KEYS:
                write_bytes_atomic(self.folder / f"{name}.filter.npy", _npy(keyfilter.build(keys[order], hi)))
        self._append({"add": [[name, int(len(keys))]], **({"meta": meta} if meta is not None else {}),
                      **({"shadowed": shadowed} if shadowed else {}), "tracked": True})
        self.merge()

    def _shadowed_by(self, keys: np.ndarray, values: np.ndarray) -> list[int]:
        """Values of a commit (``keys`` sorted, equal digests by value) that a digest stored twice makes
        non-smallest, its own or the index's: one look-up of the commit's keys (the filters answer most)."""
        same = np.flatnonzero(keys[1:] == keys[:-1]) + 1
        out = values[same].tolist()  # within the commit: all but the first of equal digests
        first = np.ones(len(keys), bool)
        first[same] = False
        keys, values = keys[first], values[first]
        stored = self.lookup(keys) if self.segments else np.full(len(keys), -1, np.int64)
        held = np.flatnonzero(stored >= 0)
        out += np.maximum(stored[held], values[held]).tolist()
        return sorted(set(int(v) for v in out))

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
                for suffix in SUFFIXES:
                    (self.folder / f"{segment.name}{suffix}").unlink(missing_ok=True)
        if self._lines > LOG_COMPACT_LINES:
            self._checkpoint()

    def add_filters(self) -> list[str]:
        """Write the filter file of every segment that should have one and has not (segments written before
        filters existed; call it under the write lock): read with ``pread`` block by block, never mapped.
        Returns the segments given a filter. Until then such a segment is simply searched for every key."""
        added = []
        for segment in self.segments:
            path = self.folder / f"{segment.name}.filter.npy"
            if segment.size < FILTER_KEYS or path.is_file():
                continue
            segment.arrays(self.folder)  # validates the segment against its log record
            reader = _NpyReader(self.folder / f"{segment.name}.keys.npy")
            tmp = self.folder / f".{path.name}{TMP_MARK}{os.getpid()}"
            builder = keyfilter.FilterBuilder(segment.size)
            out = _NpyWriter(tmp, np.uint64, builder.count * keyfilter.WORDS)
            try:
                for start in range(0, segment.size, MERGE_BLOCK):
                    keys = reader.read(start, MERGE_BLOCK)
                    out.write(builder.add(keys, _hi(keys)))
                out.write(builder.finish())
            finally:
                reader.close()
            out.finish()
            pause_point("keyindex-filter-staged", segment=segment.name)
            FS.replace(tmp, path)
            added.append(segment.name)
        if added:
            fsync_dir(self.folder)
        return added

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
        self.shadowed.update(record.get("shadowed", []))
        self.tracked = _tracked_after(self.tracked, record)
        live = {s.name: s for s in self.segments}
        for name in record.get("remove", []):
            live.pop(name, None)
        for name, size in record.get("add", []):
            live[name] = Segment(name, size)
        self.segments = list(live.values())
        for gone in set(self._filters) - set(live):
            del self._filters[gone]

    def _checkpoint(self) -> None:
        """Replace the log by one checkpoint line (atomically)."""
        data = json.dumps({"seq": self._seq, "checkpoint": [[s.name, s.size] for s in self.segments],
                           **({"shadowed": sorted(self.shadowed)} if self.shadowed else {}), "tracked": self.tracked,
                           "meta": self.meta}) + "\n"
        write_bytes_atomic(self.folder / LOG, data.encode())
        self._lines = 1
        self._read_stat = self._log_stat()

    def _merged(self, group: Sequence[Segment]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The (digests, values) of sorted segments in one sorted stream, block by block (equal digests by
        value, all copies of a digest in one block): read with ``pread``, never mapped, so memory is one
        block per input whatever the segments' size."""
        for segment in group:
            segment.arrays(self.folder)  # validates each segment against its log record
        inputs = [(_NpyReader(self.folder / f"{s.name}.keys.npy"), _NpyReader(self.folder / f"{s.name}.vals.npy"))
                  for s in group]
        try:
            cursors = [0] * len(inputs)
            sizes = [s.size for s in group]
            while sum(cursors) < sum(sizes):
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
                yield keys[order], vals[order]
        finally:
            for k, v in inputs:
                k.close()
                v.close()

    def _merge_files(self, group: Sequence[Segment]) -> Segment:
        """Streaming k-way merge of sorted segments into a new one (:meth:`_merged`), appended with ``write``."""
        total = sum(s.size for s in group)
        name = self._new_name()
        kinds = ("keys", "vals", "hi", "filter") if total >= FILTER_KEYS else ("keys", "vals", "hi")
        paths = {kind: self.folder / f".{name}.{kind}.npy{TMP_MARK}{os.getpid()}" for kind in kinds}
        builder = keyfilter.FilterBuilder(total)
        outs = {"keys": _NpyWriter(paths["keys"], DIGEST, total), "vals": _NpyWriter(paths["vals"], np.int64, total),
                "hi": _NpyWriter(paths["hi"], np.uint64, total)}
        if "filter" in kinds:
            outs["filter"] = _NpyWriter(paths["filter"], np.uint64, builder.count * keyfilter.WORDS)
        for keys, vals in self._merged(group):
            hi = _hi(keys)
            outs["keys"].write(keys)
            outs["vals"].write(vals)
            outs["hi"].write(hi)
            if "filter" in outs:
                outs["filter"].write(builder.add(keys, hi))
        if "filter" in outs:
            outs["filter"].write(builder.finish())
        for kind, out in outs.items():
            out.finish()
            FS.replace(paths[kind], self.folder / f"{name}.{kind}.npy")
        fsync_dir(self.folder)
        return Segment(name, total)

    def track_shadowed(self) -> int:
        """Record the shadowed values of an index written before they were tracked (one streaming pass over
        every segment; call it under the write lock). Returns how many were found."""
        if self.tracked:
            return 0
        found: list[int] = []
        last: tuple[bytes, int] | None = None  # the previous block's last digest and its smallest value
        for keys, vals in self._merged(self.segments):
            if last is not None and keys[0] == last[0]:
                found += vals[keys == last[0]].tolist()
            same = np.flatnonzero(keys[1:] == keys[:-1]) + 1
            found += vals[same].tolist()
            last = (keys[-1], int(vals[np.searchsorted(keys, keys[-1])]))
        pause_point("keyindex-shadowed-scanned", found=len(found))
        self._append({"add": [], "shadowed": sorted(set(found)), "scan": True})
        return len(found)

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
