"""The key index at scale: segment filters, sliced searches, look-ups in stored order, keys stored twice.

What a warm look-up costs is counted, not timed: (key, segment) pairs searched, slices, shards read; those
counts must not grow with the number of segments or keys stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.store import keyfilter
from headstart.engine.store import keyindex as K
from headstart.engine.store import keylookup
from headstart.engine.store import shards as sh
from headstart.engine.store.features import FeatureStore
from headstart.engine.store.keyindex import KeyIndex, digests

DIM = 4


def _batch(i: int, n: int = 50) -> np.ndarray:
    return digests(f"item-{i}-{j}" for j in range(n))


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every segment gets a filter and a hi file; large-segment behaviour (slices, dropped pages) from 64 keys."""
    for name, value in (("FILTER_KEYS", 1), ("HI_FILE_KEYS", 1), ("DROP_AFTER_SEARCH_KEYS", 1), ("SLICE_KEYS", 64),
                        ("FILTER_SLICE_KEYS", 128), ("MERGE_BLOCK", 37)):
        monkeypatch.setattr(K, name, value)
    monkeypatch.setattr(keyfilter, "CHUNK", 7)  # the filter of a merge step is built in several pieces
    monkeypatch.setattr(K, "LOOKUP_CHUNK", 500)  # a call's keys are looked up in several steps


def _fill(folder: Path, commits: int, per: int = 50) -> dict[bytes, int]:
    index = KeyIndex(folder)
    truth: dict[bytes, int] = {}
    for i in range(commits):
        keys = _batch(i, per)
        values = np.arange(i * per, i * per + per)
        index.commit(keys, values)
        truth.update(zip(keys.tolist(), values.tolist()))
    return truth


def test_filters_leave_one_search_per_stored_key_and_almost_none_per_absent_key(
        tmp_path: Path, small_thresholds: None) -> None:
    truth = _fill(tmp_path / "ix", 80)
    index = KeyIndex(tmp_path / "ix")
    assert len(index.segments) >= 3
    stored = np.array(list(truth), dtype="S16")
    absent = digests([f"absent {i}" for i in range(4000)])
    assert index.lookup(stored).tolist() == list(truth.values())
    pairs = len(stored) * len(index.segments)
    assert index.stats["searched"] <= len(stored) * 1.1  # the segment holding each key, plus false positives
    assert index.stats["filtered"] >= pairs - len(stored) * 1.1
    before = dict(index.stats)
    assert (index.lookup(absent) == -1).all()
    searched = index.stats["searched"] - before["searched"]
    assert searched <= 0.05 * len(absent) * len(index.segments)  # ~1 % false positives per segment
    assert index.stats["slices"] > len(index.segments)  # large segments were searched slice by slice


def test_a_filter_built_while_merging_equals_one_built_at_once_and_one_added_later(
        tmp_path: Path, small_thresholds: None) -> None:
    _fill(tmp_path / "ix", K.FANOUT)
    index = KeyIndex(tmp_path / "ix")
    [segment] = index.segments
    keys, _ = segment.arrays(index.folder)
    path = index.folder / f"{segment.name}.filter.npy"
    merged = np.load(path)
    np.testing.assert_array_equal(merged, keyfilter.build(np.asarray(keys), K._hi(np.asarray(keys))))
    path.unlink()  # an index written before filters existed
    assert index.add_filters() == [segment.name]
    np.testing.assert_array_equal(np.load(path), merged)
    assert index.add_filters() == []


def test_a_filter_file_that_does_not_match_its_segment_is_ignored(tmp_path: Path, small_thresholds: None) -> None:
    truth = _fill(tmp_path / "ix", 3)
    for path in (tmp_path / "ix").glob("*.filter.npy"):
        np.save(path, np.zeros(3, np.uint64))  # wrong size: the segment is searched for every key
    index = KeyIndex(tmp_path / "ix")
    assert index.lookup(np.array(list(truth), dtype="S16")).tolist() == list(truth.values())
    assert index.stats["filtered"] == 0


def test_keys_stored_twice_are_recorded_as_shadowed_and_an_old_index_is_scanned_once(tmp_path: Path) -> None:
    index = KeyIndex(tmp_path / "ix")
    twice = digests(["twice"])
    index.commit(np.concatenate([_batch(0, 5), twice]), np.arange(6))  # "twice" at row 5
    index.commit(np.concatenate([_batch(1, 5), twice, twice]), np.arange(6, 13))  # rows 6..12: 11, 12 again
    assert index.shadowed == {11, 12} and index.tracked
    assert KeyIndex(index.folder).lookup(twice).tolist() == [5]
    # the same index as an older writer left it: no shadowed records, commit lines not marked tracked
    log = index.folder / K.LOG
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("shadowed", "tracked")}) + "\n"
                           for r in lines))
    old = KeyIndex(index.folder)
    assert not old.tracked and old.shadowed == set()
    assert old.track_shadowed() == 2
    again = KeyIndex(index.folder)
    assert again.tracked and again.shadowed == {11, 12}
    again.commit(_batch(2, 3), np.arange(12, 15))
    again._checkpoint()  # the checkpoint keeps both
    assert KeyIndex(index.folder).shadowed == {11, 12} and KeyIndex(index.folder).tracked


def _key(i: int) -> str:
    return f"{i:064x}"


def _store(tmp_path: Path, n: int, shard: int) -> FeatureStore:
    store = FeatureStore.open(tmp_path / "features" / "fp", fingerprint="fp", dim=DIM, backbone="toy")
    rng = np.random.default_rng(0)
    with store.writer(shard_size=shard, update_index=False) as w:
        w.add([_key(i) for i in range(n)], rng.standard_normal((n, DIM)).astype(np.float32),
              [f"row {i}" for i in range(n)])
    return FeatureStore.load(store.path)


@pytest.mark.parametrize("shards", [30, 120])
def test_lookups_in_stored_order_read_a_bounded_number_of_shards_not_the_index(tmp_path: Path, shards: int) -> None:
    """A warm re-run asks keys in the order they were stored: after the first batch, every batch is answered
    from the two shards after the previous hits (one new shard read per batch), whatever the store's size."""
    shard = 64
    store = _store(tmp_path, shards * shard, shard)
    keys = [_key(i) for i in range(shards * shard)]
    lookup = store._lookup(sh.VECTORS)
    for lo in range(0, len(keys), shard):
        assert store.locate(keys[lo:lo + shard])[0].tolist() == list(range(lo, lo + shard))
    assert lookup.stats["predicted"] == len(keys) - shard  # all but the first batch
    assert lookup.stats["shards_read"] <= shards + 1
    assert lookup.index.stats["keys"] == shard  # only the first batch went to the index


def test_lookups_in_another_order_never_read_shards(tmp_path: Path) -> None:
    store = _store(tmp_path, 40 * 64, 64)
    order = np.random.default_rng(1).permutation(40 * 64)
    lookup = store._lookup(sh.VECTORS)
    for lo in range(0, len(order), 64):
        part = order[lo:lo + 64]
        assert store.locate([_key(int(i)) for i in part])[0].tolist() == part.tolist()
    assert lookup.stats["shards_read"] == 0


def test_a_key_stored_twice_gives_its_smallest_row_in_stored_order_too(tmp_path: Path) -> None:
    """Two workers stored the same key (rows 70 and 130, shards 1 and 2): a batch predicted from shard 2
    still answers 70, the index's row (the job's duplicate counting relies on one row per key)."""
    store = FeatureStore.open(tmp_path / "features" / "fp", fingerprint="fp", dim=DIM, backbone="toy")
    keys = [_key(i) for i in range(192)]
    keys[130] = keys[70]
    vectors = np.random.default_rng(0).standard_normal((192, DIM)).astype(np.float32)
    with store.writer(update_index=False) as w:
        for lo in range(0, 192, 64):
            entry = sh.write_shard_file(store.path, sh.VECTORS, sh.vector_table(keys[lo:lo + 64], [None] * 64,
                                                                                vectors[lo:lo + 64]), prefix=f"w{lo}")
            w.commit_shard_entries([entry])
    store = FeatureStore.load(store.path)
    lookup = store._lookup(sh.VECTORS)
    assert lookup.index.shadowed == {130}
    for lo in range(0, 192, 64):
        rows = store.locate(keys[lo:lo + 64])[0]
        assert rows.tolist() == [70 if k == keys[70] else i for i, k in enumerate(keys[lo:lo + 64], lo)]
    assert lookup.stats["predicted"] == 2 * 64 - 1  # batches 2 and 3 from shards, except the shadowed row


def test_sync_gives_an_old_index_its_filters_and_its_shadowed_scan(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(K, "FILTER_KEYS", 1)
    monkeypatch.setattr(K, "HI_FILE_KEYS", 1)
    store = _store(tmp_path, 10 * 64, 64)
    folder = next((store.path / keylookup.VECTOR_KEYS).iterdir())
    for path in folder.glob("*.filter.npy"):
        path.unlink()
    log = folder / K.LOG
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("shadowed", "tracked")}) + "\n"
                           for r in lines))
    assert not KeyIndex(folder).tracked
    writable = FeatureStore.open(store.path, fingerprint="fp", dim=DIM, backbone="toy")
    with writable.writer(update_index=False):  # a writer brings the index up to date under the lock
        pass
    index = KeyIndex(folder)
    assert index.tracked and all((folder / f"{s.name}.filter.npy").is_file() for s in index.segments)


MIGRATE = """
import json, sys
import numpy as np
from headstart.engine.store import keyindex as K
K.FILTER_KEYS = K.HI_FILE_KEYS = 1
index = K.KeyIndex(sys.argv[1])
index.add_filters()
index.track_shadowed()
"""


def _legacy_index(folder: Path) -> dict[bytes, int]:
    """An index as the previous code left it: no filter files, no shadowed records (a key stored twice)."""
    index = KeyIndex(folder)
    truth: dict[bytes, int] = {}
    twice = digests(["twice"])
    for i in range(K.FANOUT + 2):
        keys = np.concatenate([_batch(i, 40), twice])
        values = np.arange(i * 41, i * 41 + 41)
        index.commit(keys, values)
        truth.update((k, v) for k, v in zip(keys.tolist(), values.tolist()) if k not in truth)
    for path in folder.glob("*.filter.npy"):
        path.unlink()
    lines = [json.loads(line) for line in (folder / K.LOG).read_text().splitlines()]
    (folder / K.LOG).write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("shadowed", "tracked")})
                                        + "\n" for r in lines))
    return truth


@pytest.mark.parametrize("point", ["keyindex-filter-staged", "keyindex-shadowed-scanned"])
def test_kill_9_while_migrating_an_old_index_loses_nothing(tmp_path: Path, small_thresholds: None,
                                                           point: str) -> None:
    import subprocess
    import sys

    from pause_control import env_with, kill_when_paused, pause_env

    folder = tmp_path / "ix"
    truth = _legacy_index(folder)
    pauses = tmp_path / "pauses"
    proc = subprocess.Popen([sys.executable, "-c", MIGRATE, str(folder)], env=env_with(pause_env(pauses, point)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when_paused(pauses, point, proc)
    killed = KeyIndex(folder)
    assert not killed.tracked and killed.shadowed == set()  # the scan's line is the commit point
    probe = np.array(list(truth), dtype="S16")
    assert killed.lookup(probe).tolist() == list(truth.values())
    killed.remove_orphans()  # the killed writer's temp file
    assert not list(folder.glob(f".*{K.TMP_MARK}*"))
    killed.add_filters()
    assert killed.track_shadowed() == K.FANOUT + 1  # "twice" in every commit: all but its first row
    again = KeyIndex(folder)
    assert again.tracked and again.lookup(probe).tolist() == list(truth.values())
    assert all((folder / f"{s.name}.filter.npy").is_file() for s in again.segments)
