"""Store faults with real files, processes and signals: injected write/fsync/rename failures, disk full,
kill -9 loops, concurrent writers, a reader during commits, a held lock.

Kills and reads land at pause points (headstart.engine.faultpoints): the writer stops at a named event
and the test acts on the marker it writes, so no outcome depends on the machine's speed."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import headstart.engine.store.atomic as atomic
from pause_control import env_with, marker, pause_env, resume, wait_paused
from headstart.engine.errors import StoreError, StoreLockedError
from headstart.engine.store.features import FeatureStore

DIM = 8

# A writer process: adds ids [start, stop) in batches, one writer session per `session` ids,
# vectors a pure function of the id so any interleaving of runs must end in the same store.
WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from headstart.engine.store.features import FeatureStore, ErrorRecord
    path, start, stop, session, shard = sys.argv[1:6]
    start, stop, session, shard = int(start), int(stop), int(session), int(shard)
    store = FeatureStore.open(path, fingerprint="fp-w", dim=8, backbone="toy")
    def vec(i):
        v = np.random.default_rng(i).standard_normal(8).astype(np.float32)
        return v / np.linalg.norm(v)
    print("ready", flush=True)
    for lo in range(start, stop, session):
        with store.writer(shard_size=shard, lock_timeout=120) as w:
            for b in range(lo, min(lo + session, stop), 25):
                ids = range(b, min(b + 25, lo + session, stop))
                keep = [i for i in ids if i % 97]
                if keep:
                    w.add([f"k{i:06d}" for i in keep], np.stack([vec(i) for i in keep]), [f"row {i}" for i in keep])
                w.add_errors([ErrorRecord(f"k{i:06d}", f"row {i}", "synthetic failure", "embed") for i in ids if not i % 97])
    print("done", flush=True)
""")


def vec(i: int) -> np.ndarray:
    """The worker's vector for id ``i`` (unit norm, so each is its own nearest neighbour)."""
    v = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def spawn(path: Path, start: int, stop: int, session: int = 300, shard: int = 100, env: dict | None = None):
    return subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(start), str(stop), str(session),
                             str(shard)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_with(env or {}))


def assert_complete(path: Path, n: int) -> None:
    """The store equals a clean run over ids [0, n): same keys, same vectors, same error records."""
    store = FeatureStore.load(path)
    report = store.verify()
    assert report.ok, report.problems
    expected = [i for i in range(n) if i % 97]
    assert sorted(store.keys()) == [f"k{i:06d}" for i in expected]
    np.testing.assert_array_equal(store.get([f"k{i:06d}" for i in expected]), np.stack([vec(i) for i in expected]))
    assert sorted(r.key for r in store.error_records()) == [f"k{i:06d}" for i in range(n) if not i % 97]
    _, found = store.search(vec(5)[None], k=1)
    assert found[0, 0] == "k000005"


def new_store(home: Path, name: str = "fp-w") -> FeatureStore:
    return FeatureStore.open(home / "features" / name, fingerprint=name, dim=DIM, backbone="toy")


def add_range(store: FeatureStore, start: int, stop: int, shard: int = 100) -> None:
    with store.writer(shard_size=shard) as w:
        ids = list(range(start, stop))
        w.add([f"k{i:06d}" for i in ids], np.stack([vec(i) for i in ids]))


class FaultyFS(atomic._FileSystem):
    """Counts write/fsync/replace calls; raises ``error`` at call number ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None, error: int = errno.EIO) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.error = error

    def _tick(self, what: str) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(self.error, f"injected {os.strerror(self.error)} at {what} #{self.calls}")

    def write(self, fd, data):
        self._tick("write")
        return super().write(fd, data)

    def pwrite(self, fd, data, offset):
        self._tick("pwrite")
        return super().pwrite(fd, data, offset)

    def fsync(self, fd):
        self._tick("fsync")
        return super().fsync(fd)

    def replace(self, src, dst):
        self._tick("rename")
        return super().replace(src, dst)


def test_failure_at_every_write_fsync_rename_of_a_commit(headstart_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FaultyFS()
    monkeypatch.setattr(atomic, "FS", counter)
    probe = new_store(headstart_home, "fp-probe")
    add_range(probe, 0, 100)
    counter.calls = 0
    add_range(probe, 100, 200)  # one shard + manifest + index + manifest
    total = counter.calls
    assert total == 22  # docs/store.md: "a failure at each of the 22 write/fsync/rename steps" (a small key-index segment has no .hi file)

    raised = []
    for n in range(1, total + 1):
        name = f"fp-n{n}"
        monkeypatch.setattr(atomic, "FS", atomic._FileSystem())
        store = new_store(headstart_home, name)
        add_range(store, 0, 100)
        monkeypatch.setattr(atomic, "FS", FaultyFS(fail_at=n))
        with pytest.raises(StoreError, match="injected") as info:  # never swallowed, at any step
            add_range(store, 100, 200)
        assert info.value.hint
        raised.append(n)
        monkeypatch.setattr(atomic, "FS", atomic._FileSystem())
        reopened = FeatureStore.load(store.path)
        assert reopened.verify().ok, (n, reopened.verify().problems)
        assert len(reopened) in (100, 200)
        np.testing.assert_array_equal(reopened.get([f"k{i:06d}" for i in range(100)]),
                                      np.stack([vec(i) for i in range(100)]))
        add_range(FeatureStore.open(store.path, fingerprint=name, dim=DIM, backbone="toy"), 100, 200)
        final = FeatureStore.load(store.path)
        assert len(final) == 200 and final.verify().ok
        assert not list(final.path.rglob(f".*{atomic.TMP_MARK}*"))
    assert raised == list(range(1, total + 1))


def test_patched_copy_is_atomic_at_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_patched_copy_atomic`` (a fine-tuned graph: the base graph copied by the kernel, the tuned spans
    written over it): the result is the source with the patches; a failure at any pwrite/fsync/rename leaves
    the old destination and no temp file; a patch outside the source is refused before anything is renamed."""
    src, dst = tmp_path / "base.bin", tmp_path / "out" / "tuned.bin"
    base = os.urandom(3 << 20)
    src.write_bytes(base)
    patches = [(10, b"A" * 5), (2 << 20, os.urandom(70_000)), (len(base) - 3, b"xyz")]
    expected = bytearray(base)
    for at, data in patches:
        expected[at:at + len(data)] = data
    counter = FaultyFS()
    monkeypatch.setattr(atomic, "FS", counter)
    atomic.write_patched_copy_atomic(src, dst, patches)
    assert dst.read_bytes() == bytes(expected) and src.read_bytes() == base
    total = counter.calls
    assert total == len(patches) + 3  # one pwrite per patch, fsync, rename, fsync of the folder
    for n in range(1, total + 1):
        dst.write_bytes(b"old")
        monkeypatch.setattr(atomic, "FS", FaultyFS(fail_at=n))
        with pytest.raises(OSError, match="injected"):
            atomic.write_patched_copy_atomic(src, dst, patches)
        # a failure up to the rename keeps the old file; the folder's fsync comes after it
        assert dst.read_bytes() == (b"old" if n < total else bytes(expected)), n
        assert not list(dst.parent.glob(f".*{atomic.TMP_MARK}*"))
    monkeypatch.setattr(atomic, "FS", atomic._FileSystem())
    dst.write_bytes(b"old")
    with pytest.raises(ValueError, match="outside"):
        atomic.write_patched_copy_atomic(src, dst, [(len(base) - 2, b"four")])
    assert dst.read_bytes() == b"old" and not list(dst.parent.glob(f".*{atomic.TMP_MARK}*"))


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC, errno.EROFS])
def test_fsync_dir_raises_real_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """A failed directory fsync means the rename may not be durable: it is raised, never swallowed."""
    monkeypatch.setattr(atomic, "FS", FaultyFS(fail_at=1, error=error))
    with pytest.raises(OSError) as info:
        atomic.fsync_dir(tmp_path)
    assert info.value.errno == error


@pytest.mark.parametrize("error", sorted(atomic.FSYNC_DIR_UNSUPPORTED))
def test_fsync_dir_ignores_only_not_supported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    monkeypatch.setattr(atomic, "FS", FaultyFS(fail_at=1, error=error))
    atomic.fsync_dir(tmp_path)  # a filesystem that cannot fsync a directory is not an error
    assert atomic.FS.calls == 1 and {errno.EIO, errno.ENOSPC, errno.EROFS}.isdisjoint(atomic.FSYNC_DIR_UNSUPPORTED)


def test_disk_full_mid_shard_keeps_earlier_shards_and_retry_succeeds(headstart_home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = new_store(headstart_home)
    add_range(store, 0, 300)
    before = dict(store.manifest)

    class DiskFull(atomic._FileSystem):
        def write(self, fd, data):
            if len(data) > 1000:  # shard bodies do not fit; the tiny lock/manifest writes would
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(fd, data)

    monkeypatch.setattr(atomic, "FS", DiskFull())
    with pytest.raises(StoreError, match="No space left on device") as info:
        add_range(store, 300, 600)
    assert "free disk space" in info.value.hint
    monkeypatch.setattr(atomic, "FS", atomic._FileSystem())
    reopened = FeatureStore.load(store.path)
    assert reopened.manifest["shards"] == before["shards"] and reopened.verify().ok
    assert not list(store.path.rglob(f".*{atomic.TMP_MARK}*"))
    add_range(FeatureStore.open(store.path, fingerprint="fp-w", dim=DIM, backbone="toy"), 300, 600)
    final = FeatureStore.load(store.path)
    assert len(final) == 600 and final.verify().ok


COMMIT_EVENTS = ("store-shard-written", "store-committed")  # inside a commit (shard not yet listed) / after it


def _kill_loop(path: Path, kills: int, n: int, pauses: Path) -> int:
    """SIGKILL ``kills`` writer runs, each paused at a random commit point; return how many were killed there."""
    rng = random.Random(1234)
    killed = 0
    for attempt in range(kills):
        point = f"{rng.choice(COMMIT_EVENTS)}#{rng.randint(1, 4)}"
        folder = pauses / f"attempt-{attempt}"
        proc = spawn(path, 0, n, env=pause_env(folder, point))
        paused = wait_paused(folder, point, proc)
        assert paused["pid"] == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed += proc.returncode == -signal.SIGKILL
        store = FeatureStore.load(path)
        assert store.verify().ok  # a killed writer never leaves a torn store
        listed = [s["file"] for s in store.manifest["shards"]]
        if point.startswith("store-shard-written"):  # killed between the shard file and the manifest
            assert paused["file"] not in listed and (path / paused["file"]).is_file()
        else:
            assert paused["file"] in listed
    return killed


def _finish(path: Path, n: int) -> None:
    proc = spawn(path, 0, n)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert_complete(path, n)
    assert not list(path.rglob(f".*{atomic.TMP_MARK}*"))


def test_kill_9_loop_then_resume_equals_a_clean_run(headstart_home: Path, tmp_path: Path) -> None:
    path = headstart_home / "features" / "fp-w"
    n = 8000  # ~107 commits per clean run; 5 kills after at most 4 commits each all land mid-run
    assert _kill_loop(path, kills=5, n=n, pauses=tmp_path / "pauses") == 5
    _finish(path, n)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a hang guard only (25 writer processes, 40,000 ids)
def test_kill_9_loop_of_25(headstart_home: Path, tmp_path: Path) -> None:
    path = headstart_home / "features" / "fp-w"
    n = 40_000
    assert _kill_loop(path, kills=25, n=n, pauses=tmp_path / "pauses") == 25
    _finish(path, n)


def test_two_concurrent_writer_processes(headstart_home: Path) -> None:
    path = headstart_home / "features" / "fp-w"
    a = spawn(path, 0, 1200, session=200, shard=50)
    b = spawn(path, 600, 1800, session=200, shard=50)
    for proc in (a, b):
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    assert_complete(path, 1800)


def test_reader_during_commits_sees_whole_manifests(headstart_home: Path, tmp_path: Path) -> None:
    """A reader loops while a writer commits; the writer also stops at three commits (the reader must see
    exactly that commit's rows there), so the overlap is certain on any machine."""
    path = headstart_home / "features" / "fp-w"
    pauses = tmp_path / "pauses"
    points = ["store-committed#5", "store-committed#40", "store-committed#90"]  # of ~156 commits
    writer = spawn(path, 0, 3000, session=500, shard=20, env=pause_env(pauses, *points))

    def read() -> int | None:
        try:
            store = FeatureStore.load(path)
        except StoreError:
            return None  # not created yet
        n = len(store)
        keys = store.keys()
        assert len(keys) == n == sum(s["rows"] for s in store.manifest["shards"] if s["kind"] == "vectors")
        if n:
            np.testing.assert_array_equal(store.get(keys[-3:]), np.stack([vec(int(k[1:])) for k in keys[-3:]]))
            _, found = store.search(vec(int(keys[0][1:]))[None], k=1)
            assert found[0, 0] == keys[0]
        return n

    seen = set()
    for point in points:
        while not marker(pauses, point).exists():  # reads at whatever moments the writer's commits fall
            assert writer.poll() is None, writer.stderr.read()
            read()
        paused = wait_paused(pauses, point, writer)
        n = read()
        assert n == paused["rows"]  # the writer is stopped just after this commit: the reader sees exactly it
        seen.add(n)
        resume(pauses, point)
    while writer.poll() is None:
        read()
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert len(seen) == 3 and 0 < min(seen) and max(seen) < 3000 - 3000 // 97
    assert_complete(path, 3000)


PAUSER = "from headstart.engine.faultpoints import pause_point\npause_point('x')\npause_point('x')\nprint('through')"


def test_pause_points_stop_one_process_once_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.engine import faultpoints
    from headstart.engine.errors import ConfigError

    monkeypatch.delenv(faultpoints.PAUSE_AT_ENV, raising=False)
    faultpoints.pause_point("store-committed")  # unset: returns at once
    pauses = tmp_path / "pauses"
    env = env_with(pause_env(pauses, "x#2"))
    first = subprocess.Popen([sys.executable, "-c", PAUSER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        paused = wait_paused(pauses, "x#2", first)
        assert (paused["pid"], paused["event"], paused["n"]) == (first.pid, "x", 2)
        second = subprocess.run([sys.executable, "-c", PAUSER], env=env, capture_output=True, text=True, timeout=60)
        assert second.stdout.strip() == "through"  # the point was taken: a second process goes on
        assert first.poll() is None  # still held
        resume(pauses, "x#2")
        assert first.communicate(timeout=60)[0].strip() == "through" and first.returncode == 0
    finally:
        if first.poll() is None:
            first.kill()
    monkeypatch.setenv(faultpoints.PAUSE_AT_ENV, "x#two")
    with pytest.raises(ConfigError, match="cannot read"):
        faultpoints.pause_point("x")


def test_a_held_lock_times_out_with_a_hint(headstart_home: Path) -> None:
    path = headstart_home / "features" / "fp-w"
    store = new_store(headstart_home)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from headstart.engine.store.features import FeatureStore
        store = FeatureStore.open({str(path)!r}, fingerprint="fp-w", dim=8, backbone="toy")
        with store.writer():
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}") as info:
            with store.writer(lock_timeout=0.3):
                pass
        assert 0.3 <= time.monotonic() - t0 < 5 and info.value.hint
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with store.writer(lock_timeout=5) as w:  # the kernel dropped the dead holder's lock
        w.add(["k000001"], vec(1)[None])
    assert len(FeatureStore.load(path)) == 1
