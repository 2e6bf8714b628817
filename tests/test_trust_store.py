"""The feature store's integrity checks (issue 11, items 3, 4, 6, 12): flipped bytes in a shard, a same-size
overwritten index, read-only mounts, HEADSTART_HOME on a file. Real stores written by real `headstart embed`
runs of a tiny `onnx:` backbone (one MatMul 16→32 + L2 normalisation), real FAISS indexes, a real read-only
bind mount in a user+mount namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.errors import StoreDamagedError, StoreError
from headstart.engine.store.features import FeatureStore
from headstart.engine.store.index import IndexConfig
from headstart.engine.testing.tiny_backbones import projection_backbone

WIDTH, DIM, CLASSES, ROWS, CHUNK = 16, 32, 4, 400, 100


def _backbone(folder: Path) -> str:
    """A tiny numeric `onnx:` backbone whose graph L2-normalises its output (sidecar: normalize=true)."""
    return f"onnx:{projection_backbone(folder, width=WIDTH, dim=DIM)}"


def _data(path: Path, rows: int = ROWS, seed: int = 1) -> Path:
    """A Parquet file of ``rows`` 16-number items in 4 well separated classes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((CLASSES, WIDTH)) * 4
    labels = rng.integers(0, CLASSES, rows)
    x = (centres[labels] + rng.standard_normal((rows, WIDTH))).astype(np.float32)
    pq.write_table(pa.table({"features": pa.array(list(x), type=pa.list_(pa.float32())),
                             "label": [f"c{i}" for i in labels]}), path)
    return path


def _cli(home: Path, *args: str, read_only: bool = False) -> subprocess.CompletedProcess:
    """`python -m headstart ARGS` with HEADSTART_HOME=home; ``read_only``: home is a read-only bind mount."""
    env = dict(os.environ, HEADSTART_HOME=str(home))
    command = [sys.executable, "-m", "headstart", *args]
    if read_only:
        mount = home.parent / f"{home.name}-ro"
        mount.mkdir(exist_ok=True)
        env["HEADSTART_HOME"] = str(mount)
        script = (f'mount --bind "{home}" "{mount}" && mount -o remount,bind,ro "{mount}" && exec "$@"')
        command = ["unshare", "-rm", "sh", "-c", script, "sh", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return run


def _failed(run: subprocess.CompletedProcess) -> str:
    """The error output of a run that must fail cleanly (one error/hint, no traceback)."""
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and "Error:" not in run.stderr.replace("error:", ""), run.stderr
    assert run.stderr.startswith("error:") or "\nerror:" in run.stderr, run.stderr
    return run.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A backbone, a labelled Parquet source and a home whose store was filled by `headstart embed`."""
    root = tmp_path_factory.mktemp("trust-store")
    backbone = _backbone(root / "model")
    data = _data(root / "data.parquet")
    home = root / "home"
    summary = json.loads(_ok(_cli(home, "embed", str(data), "-b", backbone, "--chunk-size", str(CHUNK),
                                  "--json")).stdout)
    assert summary["embedded"] == ROWS
    return {"root": root, "backbone": backbone, "data": data, "home": home, "fingerprint": summary["fingerprint"]}


@pytest.fixture
def home(world: dict, tmp_path: Path) -> Path:
    """A private copy of the embedded home (tests damage it)."""
    copy = tmp_path / "home"
    shutil.copytree(world["home"], copy)
    return copy


def _store(home: Path, world: dict) -> Path:
    return home / "features" / world["fingerprint"]


def _flip_vector_bytes(path: Path, row: int = 10) -> None:
    """Flip 8 bytes inside the float data of vector ``row`` (the file keeps its size and Arrow structure)."""
    import pyarrow.feather as feather

    vector = np.asarray(feather.read_table(path).column("vector")[row].as_py(), dtype=np.float32).tobytes()
    raw = bytearray(path.read_bytes())
    at = raw.find(vector)
    assert at > 0 and raw.find(vector, at + 1) < 0
    for i in range(at + 4, at + 12):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def _damage_second_shard(store: Path) -> dict:
    manifest = json.loads((store / "manifest.json").read_text())
    entry = [s for s in manifest["shards"] if s["kind"] == "vectors"][1]
    _flip_vector_bytes(store / entry["file"])
    return entry


def _accuracy(model: Path) -> float:
    return json.loads((model / "manifest.json").read_text())["metrics"]["accuracy"]


def test_train_on_flipped_bytes_never_fits_the_damaged_vectors(world: dict, home: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    _ok(_cli(home, "train", str(world["data"]), "--head", "linear", "-b", world["backbone"], "-o", str(clean)))
    entry = _damage_second_shard(_store(home, world))
    assert entry in FeatureStore.load(_store(home, world)).manifest["shards"]  # same size: only the hash tells
    with pytest.raises(StoreDamagedError, match="sha256") as info:  # a reader refuses, naming what to do
        FeatureStore.load(_store(home, world)).contains(["x"])
    assert "cache repair" in info.value.hint and entry["file"] in info.value.message

    model = tmp_path / "after"
    run = _ok(_cli(home, "train", str(world["data"]), "--head", "linear", "-b", world["backbone"], "-o", str(model)))
    assert "dropped 1 damaged shard" in run.stderr and entry["file"] in run.stderr
    assert _accuracy(model) == _accuracy(clean) >= 0.95  # trained on re-embedded vectors, not the damaged ones
    store = FeatureStore.load(_store(home, world))
    assert store.verify().ok and len(store) == ROWS and entry["file"] not in json.dumps(store.manifest)


def test_embed_rerun_reembeds_exactly_the_damaged_shard(world: dict, home: Path) -> None:
    _damage_second_shard(_store(home, world))
    full = _cli(home, "cache", "verify", "--json")
    assert full.returncode == 1 and "sha256" in json.dumps(json.loads(full.stdout)["stores"][0]["problems"])
    run = _ok(_cli(home, "embed", str(world["data"]), "-b", world["backbone"], "--json"))
    summary = json.loads(run.stdout)
    assert summary["embedded"] == CHUNK and summary["cached"] == ROWS - CHUNK
    assert "damaged" in run.stderr
    _ok(_cli(home, "cache", "verify"))


def test_quick_verify_sees_size_and_structure_damage(world: dict, home: Path) -> None:
    store = _store(home, world)
    manifest = json.loads((store / "manifest.json").read_text())
    with open(store / manifest["shards"][0]["file"], "ab") as fh:
        fh.write(b"\0")
    problems = json.loads(_cli(home, "cache", "verify", "--quick", "--json").stdout)["stores"][0]["problems"]
    assert any("bytes" in p for p in problems)


def test_cache_repair_drops_the_damaged_shard_and_search_refuses_until_then(world: dict, home: Path) -> None:
    store_dir = _store(home, world)
    entry = _damage_second_shard(store_dir)
    import pyarrow.feather as feather

    first_key = feather.read_table(store_dir / json.loads((store_dir / "manifest.json").read_text())["shards"][0]
                                   ["file"]).column("key")[0].as_py()
    refused = _failed(_cli(home, "cache", "search", world["fingerprint"][:12], "--key", first_key))
    assert "cache repair" in refused and entry["file"] in refused

    report = json.loads(_ok(_cli(home, "cache", "repair", "--json")).stdout)["stores"][0]
    assert [d["file"] for d in report["dropped"]] == [entry["file"]] and report["items_to_reembed"] == CHUNK
    assert "sha256" in report["dropped"][0]["reason"] and not (store_dir / entry["file"]).exists()
    _ok(_cli(home, "cache", "verify"))
    found = json.loads(_ok(_cli(home, "cache", "search", world["fingerprint"][:12], "--key", first_key, "-k", "3",
                                "--json")).stdout)
    assert len(found["results"][0]["neighbours"]) == 3
    assert json.loads(_ok(_cli(home, "cache", "repair", "--json")).stdout)["stores"][0]["dropped"] == []
    summary = json.loads(_ok(_cli(home, "embed", str(world["data"]), "-b", world["backbone"], "--json")).stdout)
    assert summary["embedded"] == CHUNK


def _rewrite_shard(store: FeatureStore, index: int, vectors: np.ndarray) -> None:
    """Replace a shard by one holding ``vectors`` and record its true size and sha256 (a buggy writer)."""
    from headstart.engine.store import shards as sh
    from headstart.engine.store.atomic import write_bytes_atomic, write_json_atomic

    entry = store.manifest["shards"][index]
    table = sh.read_table(store.path / entry["file"])
    data = sh.table_bytes(sh.vector_table(table.column("key").to_pylist(), table.column("ref").to_pylist(), vectors))
    digest = write_bytes_atomic(store.path / entry["file"], data)
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["shards"][index].update(sha256=digest, bytes=len(data))
    write_json_atomic(store.path / "manifest.json", manifest)


@pytest.mark.parametrize("bad", ["not unit length", "NaN"])
def test_invariants_catch_bad_vectors_whose_checksum_matches(headstart_home: Path, bad: str) -> None:
    store = FeatureStore.open(headstart_home / "features" / "fp-n", fingerprint="fp-n", dim=8, backbone="t",
                              normalized=True)
    vectors = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"k{i}" for i in range(20)]
    with pytest.raises(StoreError, match="not unit length"):  # the writer refuses them in the first place
        with store.writer() as w:
            w.add(keys, vectors * 2)
    with store.writer() as w:
        w.add(keys, vectors)
    wrong = vectors.copy()
    wrong[3] = wrong[3] * 3 if bad == "not unit length" else np.nan
    _rewrite_shard(store, 0, wrong)
    with pytest.raises(StoreDamagedError, match="not unit length" if bad != "NaN" else "NaN"):
        FeatureStore.load(store.path).get(keys[:1])
    assert not FeatureStore.load(store.path).verify().ok


def _overwrite_same_size(path: Path) -> None:
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes())
    assert path.stat().st_size == size


def _index_store(home: Path, kind: str) -> FeatureStore:
    config = IndexConfig(kind=kind, nlist=8 if kind == "ivf" else None, nprobe=8)
    store = FeatureStore.open(home / "features" / f"fp-{kind}", fingerprint=f"fp-{kind}", dim=DIM, backbone="t",
                              normalized=True, index_config=config)
    vectors = np.random.default_rng(3).standard_normal((600, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with store.writer(shard_size=200) as w:  # a clean exit builds the index
        w.add([f"key{i:04d}" for i in range(600)], vectors)
    assert store.manifest["index"]["type"] == kind and store.manifest["index"]["n_vectors"] == 600
    return store


def _exact_neighbours(store: FeatureStore, key: str, k: int) -> list[str]:
    vectors, keys = store.vectors(), store.keys()
    sims = vectors @ vectors[keys.index(key)]
    return [keys[i] for i in np.argsort(-sims) if keys[i] != key][:k]


@pytest.mark.parametrize("kind,damaged", [("flat", "file"), ("ivf", "file"), ("ivf", "ivfdata")])
def test_same_size_overwritten_index_is_rebuilt_never_garbage(headstart_home: Path, kind: str, damaged: str) -> None:
    store = _index_store(headstart_home, kind)
    old = dict(store.manifest["index"])
    _overwrite_same_size(store.path / old[damaged])
    run = _ok(_cli(headstart_home, "cache", "search", f"fp-{kind}", "--key", "key0007", "-k", "5", "--json"))
    result = json.loads(run.stdout)
    scores = [n["score"] for n in result["results"][0]["neighbours"]]
    assert all(-1.0001 <= s <= 1.0001 for s in scores) and len(scores) == 5
    fresh = FeatureStore.load(store.path)
    if kind == "flat":  # exact: the very same neighbours as a scan
        assert [n["key"] for n in result["results"][0]["neighbours"]] == _exact_neighbours(fresh, "key0007", 5)
    assert "rebuilt" in result["search"]["note"]
    assert fresh.manifest["index"]["file"] != old["file"] and fresh.verify().ok


def test_damaged_index_on_a_read_only_store_is_searched_exactly(headstart_home: Path) -> None:
    store = _index_store(headstart_home, "flat")
    _overwrite_same_size(store.path / store.manifest["index"]["file"])
    run = _ok(_cli(headstart_home, "cache", "search", "fp-flat", "--key", "key0007", "-k", "5", "--json",
                   read_only=True))
    result = json.loads(run.stdout)
    assert [n["key"] for n in result["results"][0]["neighbours"]] == _exact_neighbours(store, "key0007", 5)
    assert "read-only" in result["search"]["note"] and result["search"]["scanned_exactly"] == 600


def test_fully_cached_work_runs_on_a_read_only_store(world: dict, home: Path, tmp_path: Path) -> None:
    data, backbone = str(world["data"]), world["backbone"]
    model = tmp_path / "model"
    before = {p.relative_to(home): p.read_bytes() for p in home.rglob("*") if p.is_file()}
    summary = json.loads(_ok(_cli(home, "embed", data, "-b", backbone, "--json", read_only=True)).stdout)
    assert summary["cached"] == ROWS and summary["embedded"] == 0
    _ok(_cli(home, "train", data, "--head", "linear", "-b", backbone, "-o", str(model), read_only=True))
    assert _accuracy(model) >= 0.95
    _ok(_cli(home, "eval", str(model), data, "--json", read_only=True))
    _ok(_cli(home, "predict", str(model), data, "-o", str(tmp_path / "p.csv"), read_only=True))
    assert (tmp_path / "p.csv").read_text().count("\n") >= ROWS
    for args in (("cache", "info"), ("cache", "verify"), ("cache", "verify", "--quick")):
        _ok(_cli(home, *args, read_only=True))
    import pyarrow.feather as feather

    store = _store(home, world)
    key = feather.read_table(store / json.loads((store / "manifest.json").read_text())["shards"][0]["file"]) \
        .column("key")[0].as_py()
    found = json.loads(_ok(_cli(home, "cache", "search", world["fingerprint"], "--key", key, "--json",
                                read_only=True)).stdout)
    assert found["search"]["index"] is None and found["search"]["scanned_exactly"] == ROWS  # no index: exact
    assert "read-only" in found["search"]["note"]
    assert {p.relative_to(home): p.read_bytes() for p in home.rglob("*") if p.is_file()} == before


def test_work_that_writes_to_a_read_only_store_fails_with_one_clear_error(world: dict, home: Path,
                                                                          tmp_path: Path) -> None:
    more = _data(tmp_path / "more.parquet", rows=50, seed=9)
    message = _failed(_cli(home, "embed", str(more), "-b", world["backbone"], read_only=True))
    assert "is read-only" in message and "50 item(s)" in message and "HEADSTART_HOME" in message
    message = _failed(_cli(home, "train", str(more), "--head", "linear", "-b", world["backbone"],
                           "-o", str(tmp_path / "m"), read_only=True))
    assert "is read-only" in message and not (tmp_path / "m").exists()
    for args in (("cache", "repair"), ("cache", "index", world["fingerprint"]), ("cache", "gc")):
        assert "is read-only" in _failed(_cli(home, *args, read_only=True))
    empty = tmp_path / "empty-home"
    empty.mkdir()
    assert "is read-only" in _failed(_cli(empty, "embed", str(more), "-b", world["backbone"], read_only=True))


def test_damaged_shard_on_a_read_only_store_is_refused_not_trained_on(world: dict, home: Path,
                                                                      tmp_path: Path) -> None:
    _damage_second_shard(_store(home, world))
    message = _failed(_cli(home, "train", str(world["data"]), "--head", "linear", "-b", world["backbone"],
                           "-o", str(tmp_path / "m"), read_only=True))
    assert "damaged" in message and "cache repair" in message and not (tmp_path / "m").exists()


@pytest.mark.parametrize("how", ["file", "under a file", "features is a file"])
def test_headstart_home_on_a_file_is_a_one_line_config_error(tmp_path: Path, how: str) -> None:
    target = tmp_path / "f"
    if how == "features is a file":
        target.mkdir()
        (target / "features").write_text("x")
    else:
        target.write_text("x")
        target = target / "sub" if how == "under a file" else target
    for args in (("cache", "info"), ("embed", str(tmp_path / "none.txt"))):
        run = _cli(target, *args)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith("error:") and "not a directory" in run.stderr and "hint:" in run.stderr
