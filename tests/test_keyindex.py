"""The LSM key index (engine/store/keyindex.py): look-ups, merges, the commit log, kill -9 and damage."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.errors import StoreError
from headstart.engine.store import keyindex as K
from headstart.engine.store.keyindex import KeyIndex, digests


def _batch(i: int, n: int = 50) -> np.ndarray:
    return digests(f"item-{i}-{j}" for j in range(n))


def test_lookups_match_a_dict_through_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K, "MERGE_BLOCK", 37)  # the streaming merge takes many steps
    index = KeyIndex(tmp_path / "ix")
    truth: dict[bytes, int] = {}
    for i in range(80):
        keys = _batch(i)
        values = np.arange(i * 50, i * 50 + 50)
        index.commit(keys, values)
        truth.update(zip(keys.tolist(), values.tolist()))
    assert len(index) == len(truth) == 4000
    assert len(index.segments) < 80 // K.FANOUT + K.FANOUT  # merged: 80 commits in a handful of segments
    reopened = KeyIndex(tmp_path / "ix")
    probe = np.array(list(truth)[::7] + [b"\x01" * 16, digests(["absent"])[0]], dtype="S16")
    expected = [truth.get(k, -1) for k in probe.tolist()]
    assert reopened.lookup(probe).tolist() == expected
    assert reopened.contains(probe).tolist() == [v >= 0 for v in expected]
    files = {p.name.split(".")[0] for p in (tmp_path / "ix").glob("*.npy")}
    assert files == {s.name for s in reopened.segments}  # merged inputs were deleted


def test_merged_segments_are_sorted_and_keep_every_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K, "MERGE_BLOCK", 5)
    index = KeyIndex(tmp_path / "ix")
    for i in range(K.FANOUT):
        index.commit(_batch(i, 30), np.arange(i * 30, i * 30 + 30))
    [segment] = index.segments
    keys, values = segment.arrays(index.folder)
    assert len(keys) == 240 and (keys[1:] > keys[:-1]).all()
    all_keys = np.concatenate([_batch(i, 30) for i in range(K.FANOUT)])
    np.testing.assert_array_equal(values, np.argsort(all_keys, kind="stable")[np.arange(240)])


def test_torn_last_log_line_is_ignored_and_log_compacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K, "LOG_COMPACT_LINES", 5)
    index = KeyIndex(tmp_path / "ix")
    for i in range(12):
        index.commit(_batch(i, 3), np.arange(i * 3, i * 3 + 3))
    assert (tmp_path / "ix" / "log").read_text().count("\n") <= 6  # compacted to a checkpoint, then a few lines
    with open(tmp_path / "ix" / "log", "ab") as log:
        log.write(b'{"seq": 99, "add": [["000000099-dead')  # a writer killed mid-append
    reopened = KeyIndex(tmp_path / "ix")
    assert len(reopened) == 36
    assert reopened.lookup(_batch(11, 3)).tolist() == [33, 34, 35]


def test_damaged_segment_is_named(tmp_path: Path) -> None:
    index = KeyIndex(tmp_path / "ix")
    index.commit(_batch(0), np.arange(50))
    [segment] = index.segments
    path = tmp_path / "ix" / f"{segment.name}.keys.npy"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StoreError, match=segment.name) as err:
        KeyIndex(tmp_path / "ix").lookup(_batch(0))
    assert "rebuilt" in err.value.hint


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from headstart.engine.store import keyindex as K
    K.MERGE_BLOCK = 64
    index = K.KeyIndex(sys.argv[1])
    i = 0
    while True:
        keys = K.digests(f"item-{i}-{j}" for j in range(200))
        index.commit(keys, np.arange(i * 200, i * 200 + 200))
        i += 1
        print(i, flush=True)
""")


def test_kill_9_while_committing_keeps_every_reported_commit(tmp_path: Path) -> None:
    folder = tmp_path / "ix"
    for target in (3, 9, 17):  # kill at different points of the merge cycle
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True)
        reported = 0
        for line in proc.stdout:
            reported = int(line)
            if reported >= target:
                break
        proc.kill()
        proc.wait()
        index = KeyIndex(folder)
        index.remove_orphans()
        committed = len(index) // 200  # the writer may commit more between its line and the signal
        assert len(index) % 200 == 0 and committed >= reported  # whole commits only, none reported lost
        for i in (0, reported // 2, reported - 1):
            keys = K.digests(f"item-{i}-{j}" for j in range(200))
            assert index.lookup(keys).tolist() == list(range(i * 200, i * 200 + 200))
        files = {p.name.split(".")[0] for p in folder.glob("*.npy")}
        assert files == {s.name for s in index.segments}
        for path in folder.iterdir():  # the next writer starts from an empty index
            path.unlink()
