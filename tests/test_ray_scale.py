"""Ray where the workers do the work (issue 12): reader splits, kill -9 loops for the driver and for a worker
while it writes a shard, stores written by Ray and by the local engine are interchangeable, and the driver's
memory does not grow with the number of items.

A tiny real ``onnx:`` backbone (one MatMul 16→384 + L2 norm) over numeric Parquet keeps the model's cost
out of the way; drivers run as child processes (killed with real signals at pause points, their peak RSS read
from the kernel's ``VmHWM``) against the session's local Ray cluster (tests/ray_cluster.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

import fixtures_faults as F
from pause_control import env_with, kill_when_paused, pause_env, wait_paused
from ray_cluster import session_cluster

pytestmark = pytest.mark.timeout(480)
WIDTH, CLASSES = 16, 5


@pytest.fixture(scope="session")
def ray_address() -> str:
    yield from session_cluster()


def numeric_parquet(path: Path, n: int, seed: int = 0, row_group: int = 500) -> Path:
    """``n`` rows: ``x`` (16 float32, class centre + noise, all distinct) and ``label`` (c0..c4)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, WIDTH)).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    x = centres[y] + 0.8 * rng.standard_normal((n, WIDTH)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), WIDTH)
    pq.write_table(pa.table({"x": column, "label": [f"c{i}" for i in y]}), path, row_group_size=row_group)
    return path


def fresh_home(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    from headstart.engine.plugins import set_engine

    home = tmp_path / name
    home.mkdir()
    monkeypatch.setenv("HEADSTART_HOME", str(home))
    set_engine(None)
    return home


def local_store(source: Path, backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The local engine's store of ``source`` in its own home: (result, store)."""
    from headstart.engine.embed.pipeline import embed

    fresh_home(tmp_path, "local-home", monkeypatch)
    result = embed(source, backbone, progress=False)
    return result, result.store


def the_store(home: Path):
    from headstart.engine.store.features import FeatureStore

    (path,) = list((home / "features").iterdir())
    return FeatureStore.load(path)


def scores(metrics: dict) -> dict:
    """Metrics without the timings (the calibration included: the same vectors give the same fit, to the bit,
    whatever order the store holds them in)."""
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


def assert_same_vectors(store, reference) -> None:
    keys = reference.keys()
    assert sorted(store.keys()) == sorted(keys)
    np.testing.assert_array_equal(store.get(keys), reference.get(keys))


# A driver in its own process (so it can be killed, and its peak RSS is its own); its Ray job carries
# environment variables to its actors (runtime_env), so a worker pause point is set for this job only.
DRIVER = """
import json, logging, sys
import ray
from headstart.engine.distributed.ray_embed import embed_on_ray
source, backbone, address, worker_env, split_rows = sys.argv[1:6]
ray.init(address=address, runtime_env={"env_vars": json.loads(worker_env)}, logging_level=logging.WARNING)
result = embed_on_ray(source, backbone=backbone, workers=2, chunk_size=250, split_rows=int(split_rows),
                      keep_rows=False, update_index=False, progress=False)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
s = result.stats
print(json.dumps({"summary": 1, "rows": s.rows, "embedded": s.embedded, "cached": s.cached, "failed": s.failed,
                  "vmhwm_kb": peak}))
"""


def start_driver(source: Path, backbone: str, address: str, log: Path, split_rows: int = 500,
                 worker_env: dict | None = None, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", DRIVER, str(source), backbone, address, json.dumps(worker_env or {}), str(split_rows)]
    return subprocess.Popen(args, env=env_with(env or {}), stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def summary_of(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith('{"summary"')))  # Ray logs too


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def test_reader_splits_read_exactly_what_the_whole_source_reads(tmp_path):
    """Every built-in reader's splits, read one by one, give the whole source's items (refs, keys, labels,
    errors) in order, at several split sizes; the awkward cases: a BOM, a quoted field spanning lines,
    blank lines, an invalid JSON line, row groups, class folders with a broken and a skipped file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from headstart.engine.distributed.ray_embed import plan_splits
    from headstart.engine.embed.sources import open_source

    d = tmp_path
    (d / "a.csv").write_bytes(b'\xef\xbb\xbftext,label\n"multi\nline",a\n\nb text,b\r\nc,c\n"d ""q""",d\ne,e\n')
    (d / "a.jsonl").write_text('{"text":"x","label":"a"}\n\n{"text":"y","label":"b"}\nnot json\n{"text":"z","label":"c"}')
    (d / "a.txt").write_bytes(b"l1\nl2\n\nl4\r\nl\xff5\nl6")
    np.save(d / "a.npy", np.arange(30, dtype=np.float32).reshape(10, 3))
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(50)], "label": ["a", "b"] * 25}), d / "a.parquet",
                   row_group_size=7)
    for i in range(7):
        F.write(d / "images" / f"class{i % 2}" / f"img{i}.jpg", F.jpeg(20 + i, 20, seed=i))
    F.write(d / "images" / "class0" / "broken.jpg", F.corrupt_jpeg())
    (d / "images" / "class1" / "notes.txt").write_text("not an image")
    for name in ("a.csv", "a.jsonl", "a.txt", "a.npy", "a.parquet", "images"):
        source = open_source(d / name)
        whole = [(i.ref, i.key, i.label, i.error) for i in source]
        assert len(whole) >= 4, name
        for rows in (1, 2, 3, 1000):
            splits = plan_splits(source, rows)
            assert len(splits) >= 2 or rows == 1000 or name == "a.parquet", (name, rows)
            parts = [(i.ref, i.key, i.label, i.error) for split in splits for i in source.read_split(split)]
            assert parts == whole, (name, rows)


@pytest.mark.timeout(900)
def test_driver_sigkill_loop_resumes_with_only_missing_items(tmp_path, ray_address, tiny_backbone, monkeypatch):
    """Three drivers in a row are SIGKILLed just after their second commit; each leaves a store that verifies
    and holds more than before; the fourth run embeds exactly the missing items, and the store equals the
    local engine's."""
    from headstart.engine.distributed.ray_embed import embed_on_ray

    n = 6000
    source = numeric_parquet(tmp_path / "x.parquet", n, seed=1)
    _, reference = local_store(source, tiny_backbone, tmp_path, monkeypatch)
    home = fresh_home(tmp_path, "ray-home", monkeypatch)
    shutil.copytree(reference.path.parent.parent / "exports", home / "exports")  # the export once, not per run
    done = 0
    for attempt in range(3):
        pauses, point = tmp_path / f"pauses{attempt}", "store-committed#2"
        driver = start_driver(source, tiny_backbone, ray_address, tmp_path / f"driver{attempt}.log",
                              env=pause_env(pauses, point))
        try:
            paused = kill_when_paused(pauses, point, driver, timeout=300)
        finally:
            driver.stdout.close()
        assert driver.returncode == -signal.SIGKILL
        store = the_store(home)
        assert store.verify().ok
        assert len(store) == paused["rows"] and done < len(store) < n  # two more splits committed, no more
        done = len(store)
    result = embed_on_ray(source, backbone=tiny_backbone, workers=2, chunk_size=250, split_rows=500,
                          keep_rows=False, progress=False)
    assert (result.stats.embedded, result.stats.cached, result.stats.rows) == (n - done, done, n)
    store = the_store(home)
    assert len(store) == n and store.verify().ok  # nothing embedded twice
    assert_same_vectors(store, reference)


@pytest.mark.timeout(900)
def test_worker_sigkill_while_writing_a_shard_is_retried(tmp_path, ray_address, tiny_backbone, monkeypatch):
    """A worker stops right after staging its first shard file (before returning it) and is SIGKILLed:
    Ray re-runs its split on the restarted actor, the staged file is never committed (an orphan the next
    writer removes), and the store verifies and equals the local engine's."""
    from headstart.engine.distributed.ray_embed import embed_on_ray

    n = 3000
    source = numeric_parquet(tmp_path / "x.parquet", n, seed=2)
    _, reference = local_store(source, tiny_backbone, tmp_path, monkeypatch)
    home = fresh_home(tmp_path, "ray-home", monkeypatch)
    shutil.copytree(reference.path.parent.parent / "exports", home / "exports")
    pauses, point = tmp_path / "pauses", "ray-shard-written#1"
    driver = start_driver(source, tiny_backbone, ray_address, tmp_path / "driver.log",
                          worker_env=pause_env(pauses, point))
    try:
        paused = wait_paused(pauses, point, driver, timeout=300)
        victim = psutil.Process(paused["pid"])
        assert "SplitWorker" in " ".join(victim.cmdline()) and paused["pid"] != driver.pid
        staged = the_store(home).path / paused["file"]
        assert staged.is_file()  # written, not yet committed
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        out, _ = driver.communicate(timeout=300)
    finally:
        kill(driver)
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
    summary = summary_of(out)
    assert (summary["rows"], summary["embedded"], summary["failed"]) == (n, n, 0)
    store = the_store(home)
    assert paused["file"] not in {s["file"] for s in store.manifest["shards"]}
    assert store.contains(paused["keys"], include_errors=False).all()  # the killed split, done by the retry
    assert len(store) == n and store.verify().ok
    assert_same_vectors(store, reference)
    again = embed_on_ray(source, backbone=tiny_backbone, workers=2, split_rows=500, progress=False)
    assert (again.stats.embedded, again.stats.cached, again.stats.session_created) == (0, n, False)
    assert not staged.exists()  # the next writer removed the orphan


def test_ray_and_local_stores_are_interchangeable(tmp_path, ray_address, tiny_backbone, monkeypatch):
    """The same source embedded by each engine: the same rows, keys and vectors; a head trained on either
    store scores the same on the other, and training on the Ray store embeds nothing."""
    from headstart.engine.distributed.ray_embed import embed_on_ray
    from headstart.engine.train.api import evaluate, train

    source = numeric_parquet(tmp_path / "x.parquet", 2000, seed=3)
    local, local_st = local_store(source, tiny_backbone, tmp_path, monkeypatch)
    local_home = local_st.path.parent.parent
    home = fresh_home(tmp_path, "ray-home", monkeypatch)
    ray_result = embed_on_ray(source, backbone=tiny_backbone, workers=2, chunk_size=300, split_rows=500,
                              progress=False)
    assert (ray_result.keys, ray_result.refs, ray_result.labels) == (local.keys, local.refs, local.labels)
    assert ray_result.fingerprint == local.fingerprint
    ray_st = the_store(home)
    assert_same_vectors(ray_st, local_st)
    generation = ray_st.manifest["generation"]
    on_ray = train(source, "linear", backbone=tiny_backbone, out=tmp_path / "model-ray", progress=False)
    assert the_store(home).manifest["generation"] == generation  # every item came from the Ray store
    from headstart.engine.plugins import set_engine

    monkeypatch.setenv("HEADSTART_HOME", str(local_home))
    set_engine(None)
    on_local = train(source, "linear", backbone=tiny_backbone, out=tmp_path / "model-local", progress=False)
    assert scores(on_ray.metrics) == scores(on_local.metrics)  # the same vectors: the same fit and scores
    scored_here = evaluate(tmp_path / "model-ray", source, progress=False)  # Ray-trained head, local store
    monkeypatch.setenv("HEADSTART_HOME", str(home))
    set_engine(None)
    scored_there = evaluate(tmp_path / "model-local", source, progress=False)  # local head, Ray store
    assert scores(scored_there) == scores(scored_here) and scored_here["n"] == 2000 and scored_here["accuracy"] > 1 / CLASSES


@pytest.mark.timeout(900)
def test_driver_peak_memory_does_not_grow_with_items(tmp_path, ray_address, tiny_backbone, monkeypatch):
    """The driver's peak RSS (VmHWM) at 8,000 and at 64,000 items differs by far less than the old design's
    ~6.6 KB per item (the driver kept every source row): under 1 KB per added item, a generous bound."""
    peaks = {}
    for n in (8000, 64000):
        source = numeric_parquet(tmp_path / f"x{n}.parquet", n, seed=4, row_group=2000)
        fresh_home(tmp_path, f"home{n}", monkeypatch)
        driver = start_driver(source, tiny_backbone, ray_address, tmp_path / f"driver{n}.log", split_rows=2000)
        try:
            out, _ = driver.communicate(timeout=600)
        finally:
            kill(driver)
        assert driver.returncode == 0, (tmp_path / f"driver{n}.log").read_text()[-3000:]
        summary = summary_of(out)
        assert (summary["rows"], summary["embedded"]) == (n, n)
        peaks[n] = summary["vmhwm_kb"] * 1024
    grown = peaks[64000] - peaks[8000]
    print(f"driver peak RSS (VmHWM): {peaks[8000] / 2**20:.1f} MiB at 8,000 items, {peaks[64000] / 2**20:.1f} MiB at 64,000")
    assert grown < 1024 * (64000 - 8000), peaks
