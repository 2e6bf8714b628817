"""The feature store: API, shards readable without headstart, FAISS search (flat and on-disk IVF), verify, gc, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.errors import DimensionMismatchError, StoreError
from headstart.engine.store.features import ErrorRecord, FeatureStore
from headstart.engine.store.index import IndexConfig

DIM = 16


def vecs(n: int, start: int = 0, dim: int = DIM) -> np.ndarray:
    """Deterministic unit vectors, one per integer id."""
    out = np.stack([np.random.default_rng(i).standard_normal(dim) for i in range(start, start + n)]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def keys(n: int, start: int = 0) -> list[str]:
    return [f"key{i:06d}" for i in range(start, start + n)]


@pytest.fixture
def store(headstart_home: Path) -> FeatureStore:
    return FeatureStore.open(headstart_home / "features" / "fp-a", fingerprint="fp-a", dim=DIM, backbone="toy")


def test_add_get_contains_and_idempotent_rerun(store: FeatureStore) -> None:
    with store.writer(shard_size=64) as w:
        assert w.add(keys(150), vecs(150), [f"row {i}" for i in range(150)]) == 150
        w.add_errors([ErrorRecord("bad-1", "img/broken.jpg", "cannot decode", "decode")])
    assert len(store) == 150 and store.keys() == keys(150)
    assert store.info()["shards"] == 3  # 64 + 64 + 22
    order = ["key000149", "key000000", "key000077"]
    np.testing.assert_array_equal(store.get(order), vecs(150)[[149, 0, 77]])
    assert store.refs(order) == ["row 149", "row 0", "row 77"]
    assert store.contains(["key000003", "bad-1", "nope"]).tolist() == [True, True, False]
    assert store.contains(["bad-1"], include_errors=False).tolist() == [False]
    assert store.errors_for(["bad-1", "key000001"]) == {
        "bad-1": ErrorRecord("bad-1", "img/broken.jpg", "cannot decode", "decode")}
    with pytest.raises(StoreError, match="no vector for 1 key"):
        store.get(["key000001", "missing-key"])

    generation = store.manifest["generation"]
    with store.writer(shard_size=64) as w:
        assert w.add(keys(200), vecs(200)) == 50  # 150 skipped
        assert w.add_errors([ErrorRecord("bad-1", None, "again", "decode")]) == 0
    assert store.manifest["generation"] > generation
    reread = FeatureStore.load(store.path)
    assert len(reread) == 200 and reread.info()["n_errors"] == 1
    np.testing.assert_array_equal(reread.vectors(), vecs(200))


def test_a_vector_supersedes_an_error_record(store: FeatureStore) -> None:
    with store.writer() as w:
        w.add_errors([ErrorRecord("k", "a.txt", "timeout", "embed")])
    with store.writer() as w:
        assert w.add(["k"], vecs(1)) == 1
    assert store.error_records() == [] and store.info()["n_errors"] == 0


def test_shards_are_plain_arrow_files(store: FeatureStore) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather

    with store.writer() as w:
        w.add(keys(10), vecs(10), [f"f{i}.jpg" for i in range(10)])
        w.add_errors([ErrorRecord("e1", "x.png", "truncated", "decode")])
    files = {s["kind"]: store.path / s["file"] for s in store.manifest["shards"]}
    table = feather.read_table(files["vectors"])
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert table.column("key").to_pylist() == keys(10)
    np.testing.assert_array_equal(np.stack(table.column("vector").to_numpy(zero_copy_only=False)), vecs(10))
    assert feather.read_table(files["errors"]).to_pylist() == [
        {"key": "e1", "ref": "x.png", "reason": "truncated", "stage": "decode"}]


def test_identity_is_checked_before_any_add_or_search(store: FeatureStore, headstart_home: Path) -> None:
    with store.writer() as w:
        w.add(keys(5), vecs(5))
    with pytest.raises(DimensionMismatchError, match="32-d"):
        FeatureStore.open(store.path, fingerprint="fp-a", dim=32, backbone="toy")
    with pytest.raises(DimensionMismatchError, match="fingerprint fp-a, not fp-b"):
        FeatureStore.open(store.path, fingerprint="fp-b", dim=DIM, backbone="toy")
    with store.writer() as w:
        with pytest.raises(DimensionMismatchError):
            w.add(["x"], vecs(1, dim=DIM + 1))
        with pytest.raises(DimensionMismatchError, match="fingerprint fp-other"):
            w.add(["x"], vecs(1), fingerprint="fp-other")
        bad = vecs(3)
        bad[1, 2] = np.nan
        with pytest.raises(StoreError, match="NaN or Inf: y1"):
            w.add(["y0", "y1", "y2"], bad)
    with pytest.raises(DimensionMismatchError):
        store.search(vecs(2, dim=8))
    assert len(FeatureStore.load(store.path)) == 5
    with pytest.raises(StoreError, match="without a manifest does not exist"):
        FeatureStore.load(headstart_home / "features" / "nothing-here")
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore.load(store.path).writer()


def test_flat_search_matches_brute_force_and_covers_an_unindexed_tail(store: FeatureStore) -> None:
    data = vecs(500)
    with store.writer(shard_size=128) as w:
        w.add(keys(400), data[:400])
    assert store.manifest["index"]["type"] == "flat" and store.manifest["index"]["n_vectors"] == 400
    # a writer killed before its index update leaves a tail the index does not cover
    writer = store.writer(shard_size=50)
    writer.__enter__()
    writer.add(keys(100, 400), data[400:])
    writer.commit()
    writer._lock.release()
    reader = FeatureStore.load(store.path)
    assert reader.manifest["index"]["n_vectors"] == 400 and len(reader) == 500
    queries = vecs(7, 10_000)
    scores, found = reader.search(queries, k=5)
    expected = np.argsort(-(queries @ data.T), axis=1)[:, :5]
    assert found.tolist() == [[f"key{i:06d}" for i in row] for row in expected]
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ data.T, expected, axis=1), rtol=1e-5)
    s2, k2 = reader.search_keys(["key000003"], k=3)
    assert "key000003" not in k2[0] and k2.shape == (1, 3)
    _, tiny = reader.search(queries[:1], k=600)
    assert (tiny[0, 500:] == None).all()  # noqa: E711 - fewer stored than k


def test_on_disk_ivf_is_built_from_shards_extended_and_survives_a_move(store: FeatureStore, tmp_path: Path) -> None:
    data = vecs(3000)
    config = IndexConfig(kind="ivf", nlist=16, nprobe=16)  # nprobe == nlist: exact, comparable to brute force
    with store.writer(shard_size=1000) as w:
        w.add(keys(2000), data[:2000])
    store.rebuild_index(config)
    entry = store.manifest["index"]
    assert entry["type"] == "ivf" and entry["n_vectors"] == 2000
    with store.writer(shard_size=1000) as w:
        w.add(keys(1000, 2000), data[2000:])
    entry2 = store.manifest["index"]
    assert entry2["n_vectors"] == 3000 and entry2["trained"] == entry["trained"]  # trained once, filled per shard
    assert not (store.path / entry["file"]).exists() and not (store.path / entry["ivfdata"]).exists()
    assert not list((store.path / "index" / "blocks").iterdir())  # merge blocks are scratch
    assert store.verify().ok

    moved = tmp_path / "moved-store"
    shutil.copytree(store.path, moved)
    shutil.rmtree(store.path)
    reader = FeatureStore.load(moved)
    queries = vecs(5, 50_000)
    _, found = reader.search(queries, k=4)
    expected = np.argsort(-(queries @ data.T), axis=1)[:, :4]
    assert found.tolist() == [[f"key{i:06d}" for i in row] for row in expected]
    assert reader.verify().ok


def test_auto_switches_to_ivf_above_the_threshold(headstart_home: Path) -> None:
    store = FeatureStore.open(headstart_home / "features" / "fp-auto", fingerprint="fp-auto", dim=DIM,
                              backbone="toy", index_config=IndexConfig(ivf_threshold=600, nlist=8, nprobe=8))
    with store.writer(shard_size=500) as w:
        w.add(keys(500), vecs(500))
    assert store.info()["index"] == "flat"
    with store.writer(shard_size=500) as w:
        w.add(keys(300, 500), vecs(300, 500))
    assert store.info()["index"] == "ivf" and store.verify().ok


def _damage(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_verify_detects_damage_and_cli_exits_non_zero(store: FeatureStore, headstart_home: Path) -> None:
    with store.writer(shard_size=40) as w:
        w.add(keys(100), vecs(100))
    env = dict(os.environ, HEADSTART_HOME=str(headstart_home))
    cmd = [sys.executable, "-m", "headstart", "cache", "verify", "--json"]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True

    _damage(store.path / store.manifest["shards"][1]["file"])
    report = FeatureStore.load(store.path).verify()
    assert not report.ok and "sha256" in report.problems[0]
    (store.path / store.manifest["shards"][2]["file"]).write_bytes(b"not arrow")
    with pytest.raises(StoreError, match="cannot be read") as info:
        FeatureStore.load(store.path).get(["key000001"])
    assert "cache verify" in info.value.hint
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["stores"][0]["problems"] and "damaged" in bad.stderr


def test_rebuild_index_repairs_a_damaged_index(store: FeatureStore) -> None:
    with store.writer() as w:
        w.add(keys(50), vecs(50))
    _damage(store.path / store.manifest["index"]["file"])
    assert not store.verify().ok
    store.rebuild_index()
    assert store.verify().ok
    assert store.search(vecs(1, 7), k=1)[1][0, 0] == "key000007"


def test_gc_removes_garbage_but_not_live_files(store: FeatureStore, headstart_home: Path) -> None:
    from headstart.engine.config import Settings
    from headstart.engine.store.catalog import gc, list_stores
    from headstart.engine.store.lock import StoreLock

    with store.writer() as w:
        w.add(keys(20), vecs(20))
    live = {p for p in store.path.rglob("*") if p.is_file()}
    (store.path / "shards" / "000009-deadbeef.vectors.arrow").write_bytes(b"orphan")
    (store.path / "shards" / ".x.arrow.tmp-1-ab").write_bytes(b"temp")
    stray = headstart_home / "features" / "half-made"
    stray.mkdir()
    (stray / "junk").write_bytes(b"x" * 10)
    os.utime(stray / "junk", (time.time() - 3600,) * 2)
    os.utime(stray, (time.time() - 3600,) * 2)
    fresh = headstart_home / "features" / "being-created"
    fresh.mkdir()

    settings = Settings.from_env(home=headstart_home)
    with StoreLock(store.path, timeout=1):  # a live writer: gc leaves the whole store alone
        first = gc(settings)
    assert first["skipped_locked"] == [str(store.path)] and first["removed_dirs"] == [str(stray)]
    assert (store.path / "shards" / ".x.arrow.tmp-1-ab").exists()
    result = gc(settings)
    assert result["removed_files"] == 2 and result["removed_dirs"] == [] and result["bytes_freed"] == 10
    assert fresh.exists() and {p for p in store.path.rglob("*") if p.is_file()} == live
    assert [s["fingerprint"] for s in list_stores(settings)] == ["fp-a"]
    assert FeatureStore.load(store.path).verify().ok


def test_cli_info_search_and_gc(store: FeatureStore) -> None:
    from click.testing import CliRunner

    from headstart.engine.cli import cli

    with store.writer() as w:
        w.add(keys(30), vecs(30), [f"r{i}" for i in range(30)])
        w.add_errors([ErrorRecord("bad", "b.jpg", "not an image", "decode")])
    runner = CliRunner()
    info = runner.invoke(cli, ["cache", "info", "--json", "--errors"])
    assert info.exit_code == 0, info.output
    entry = json.loads(info.output)["stores"][0]
    assert (entry["backbone"], entry["n_vectors"], entry["n_errors"]) == ("toy", 30, 1)
    assert entry["bytes"] > 30 * DIM * 4 and entry["errors"][0]["ref"] == "b.jpg"
    table = runner.invoke(cli, ["cache", "info", "--errors"])
    assert "not an image" in table.output and "fp-a" in table.output

    found = runner.invoke(cli, ["cache", "search", "fp-", "--key", "key000004", "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    neighbours = json.loads(found.output)["results"][0]["neighbours"]
    expected = np.argsort(-(vecs(30) @ vecs(30)[4]))[1:4]
    assert [n["key"] for n in neighbours] == [f"key{i:06d}" for i in expected]
    assert neighbours[0]["ref"] == f"r{expected[0]}"
    gc_out = runner.invoke(cli, ["cache", "gc", "--json"])
    assert gc_out.exit_code == 0 and json.loads(gc_out.output)["removed_files"] == 0


def test_empty_store_search_and_large_vectors_memory_mapped(store: FeatureStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import headstart.engine.store.features as features

    scores, found = store.search(vecs(2), k=3)
    assert found.shape == (2, 3) and (found == None).all() and np.isneginf(scores).all()  # noqa: E711
    with store.writer(shard_size=100) as w:
        w.add(keys(250), vecs(250))
    monkeypatch.setattr(features, "_LARGE_BYTES", 1000)  # treat this store as larger than RAM
    all_vectors = FeatureStore.load(store.path).vectors()
    assert isinstance(all_vectors, np.memmap)
    np.testing.assert_array_equal(all_vectors, vecs(250))
    assert not list(store.path.glob(".vectors*"))  # the backing file is anonymous
