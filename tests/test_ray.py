"""`embed --engine ray` on a real local Ray cluster: parity with the local engine, worker and driver kills.

One cluster for the whole session (8 logical CPUs on a small machine, no dashboard, ~200 MB object
store); every test has a 120 s timeout (the kill tests 480 s, more than their inner waits added up) so
a Ray hang fails fast instead of stalling CI. Kills land at pause points (headstart.engine.faultpoints).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fixtures_faults as F
from pause_control import env_with, kill_when_paused, pause_env, wait_paused
from ray_cluster import session_cluster

pytestmark = pytest.mark.timeout(120)
ACTOR = "SplitWorker"


@pytest.fixture(scope="session")
def ray_address() -> str:
    yield from session_cluster()


def make_ray_home(tmp_path: Path, session_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store root sharing the session's exports (same fingerprints, no second export)."""
    from headstart.engine.plugins import set_engine

    home = tmp_path / "ray-home"
    home.mkdir()
    if (session_home / "exports").is_dir():
        shutil.copytree(session_home / "exports", home / "exports")
    monkeypatch.setenv("HEADSTART_HOME", str(home))
    set_engine(None)
    return home


@pytest.fixture
def ray_home(tmp_path: Path, session_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_ray_home(tmp_path, session_home, monkeypatch)


def texts_csv(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = ("payment refund card bank late parcel screen broken login password account transfer storm "
             "invoice museum council ticket charger budget harvest delivery weather").split()
    lines = ["text,label"]
    for i in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(3, 40))))
        lines.append(f"{text} number {i},c{i % 3}")
    lines.append(lines[1])  # a duplicate row: embedded once, both rows get the vector
    path.write_text("\n".join(lines) + "\n")
    return path


def image_folder(root: Path, n: int = 30) -> Path:
    for i in range(n):
        F.write(root / f"class{i % 3}" / f"img{i:02d}.jpg", F.jpeg(40 + 7 * i, 30 + 5 * i, seed=i))
    F.write(root / "class0" / "broken.jpg", F.corrupt_jpeg())
    return root


def local_embed(source: Path):
    from headstart.engine.embed.pipeline import embed

    result = embed(source, progress=False, workers=0)
    return result, dict(zip(result.keys, result.vectors))


def shard_count(store_path: Path) -> int:
    manifest = store_path / "manifest.json"
    if not manifest.exists():
        return 0
    return sum(1 for s in json.loads(manifest.read_text())["shards"] if s["kind"] == "vectors")


def store_path_of(home: Path, fingerprint: str) -> Path:
    return home / "features" / fingerprint


def test_cli_text_matches_local_engine(tmp_path, ray_address, session_home, monkeypatch):
    from click.testing import CliRunner

    from headstart.engine.cli import cli
    from headstart.engine.store.features import FeatureStore

    source = texts_csv(tmp_path / "texts.csv", 200)
    reference, ref_vectors = local_embed(source)
    home = make_ray_home(tmp_path, session_home, monkeypatch)
    out = CliRunner().invoke(cli, ["embed", str(source), "--engine", "ray", "--workers", "2", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output[out.output.index("{"):])
    assert (summary["rows"], summary["embedded"], summary["duplicates"], summary["failed"]) == (201, 200, 1, 0)
    store = FeatureStore.load(store_path_of(home, reference.fingerprint))
    assert sorted(store.keys()) == sorted(ref_vectors)
    keys = list(ref_vectors)
    np.testing.assert_allclose(store.get(keys), np.stack([ref_vectors[k] for k in keys]), atol=1e-5)
    assert store.manifest["index"]["n_vectors"] == 200
    assert store.verify().ok


def test_images_match_local_engine_with_errors_and_blocks(tmp_path, ray_address, session_home, monkeypatch):
    from headstart.engine.distributed.ray_embed import embed_on_ray, plan_splits
    from headstart.engine.embed.sources import open_source

    source = image_folder(tmp_path / "images")
    reference, ref_vectors = local_embed(source)
    home = make_ray_home(tmp_path, session_home, monkeypatch)
    splits = plan_splits(open_source(source), 8)  # the workers read the files: the driver plans file lists
    assert [len(s) for s in splits] == [8, 8, 8, 7]
    result = embed_on_ray(source, workers=2, chunk_size=8, progress=False)
    assert result.fingerprint == reference.fingerprint
    assert result.keys == reference.keys and result.labels == reference.labels
    assert [(e.ref, e.reason) for e in result.errors] == [(e.ref, e.reason) for e in reference.errors]
    assert len(result.errors) == 1 and result.stats.embedded == 30
    np.testing.assert_allclose(result.vectors, np.stack([ref_vectors[k] for k in result.keys]), atol=1e-4)
    assert shard_count(store_path_of(home, result.fingerprint)) == 4  # 31 items in blocks of 8: one shard each
    again = embed_on_ray(source, workers=2, chunk_size=8, progress=False)
    assert (again.stats.embedded, again.stats.cached, again.stats.session_created) == (0, 31, False)
    assert [e.reason for e in again.errors] == [e.reason for e in reference.errors]


# A driver in its own process, so its Ray job can carry environment variables to its actors (runtime_env):
# the pause point in the workers is set for this job only, not for the session's cluster.
DRIVER = """
import json, logging, sys
import ray
from headstart.engine.distributed.ray_embed import embed_on_ray
source, address, worker_env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ray.init(address=address, runtime_env={"env_vars": worker_env}, logging_level=logging.WARNING)
result = embed_on_ray(source, workers=2, chunk_size=20, progress=False)
print(json.dumps({"embedded": result.stats.embedded, "failed": result.stats.failed, "rows": len(result.keys),
                  "fingerprint": result.fingerprint}))
"""


def start_driver(source: Path, address: str, log: Path, worker_env: dict | None = None,
                 env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(source), address, json.dumps(worker_env or {})],
                            env=env_with(env or {}), stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def assert_matches_local_engine(store_path: Path, reference: dict) -> None:
    from headstart.engine.store.features import FeatureStore

    store = FeatureStore.load(store_path)
    assert store.verify().ok and sorted(store.keys()) == sorted(reference)
    keys = list(reference)
    np.testing.assert_allclose(store.get(keys), np.stack([reference[k] for k in keys]), atol=1e-5)


@pytest.mark.timeout(480)
def test_worker_sigkill_is_retried_and_store_is_complete(tmp_path, ray_address, session_home, monkeypatch):
    """An actor stops at a pause point inside its first block and is SIGKILLed there: the job can only
    finish if Ray retries that block on another actor process."""
    import psutil

    from headstart.engine.backbones.resolve import resolve_backbone

    source = texts_csv(tmp_path / "texts.csv", 800, seed=1)
    _, reference = local_embed(source)
    home = make_ray_home(tmp_path, session_home, monkeypatch)
    pauses, point = tmp_path / "pauses", "ray-block#1"
    log = tmp_path / "driver.log"
    driver = start_driver(source, ray_address, log, worker_env=pause_env(pauses, point))
    try:
        paused = wait_paused(pauses, point, driver, timeout=200)
        victim = psutil.Process(paused["pid"])
        assert ACTOR in " ".join(victim.cmdline())  # a Ray actor, not the driver
        assert driver.poll() is None  # the paused block holds the job: it cannot have finished
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        out, _ = driver.communicate(timeout=200)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
    assert driver.returncode == 0, log.read_text()[-3000:]
    summary = json.loads(next(line for line in out.splitlines() if line.startswith('{"embedded"')))  # Ray logs too
    assert (summary["embedded"], summary["failed"], summary["rows"]) == (800, 0, 801)
    store_path = store_path_of(home, summary["fingerprint"])
    from headstart.engine.store.features import FeatureStore

    store = FeatureStore.load(store_path)
    assert store.contains(paused["keys"], include_errors=False).all()  # the killed block, done by a retry
    assert len(paused["keys"]) == 20 and not psutil.pid_exists(paused["pid"])
    assert_matches_local_engine(store_path, reference)
    assert len(store) == 800 and resolve_backbone("minilm-l6").dim == store.dim


@pytest.mark.timeout(480)
def test_driver_sigkill_then_rerun_embeds_only_missing(tmp_path, ray_address, session_home, monkeypatch):
    """The driver stops at a pause point just after its third block commit and is SIGKILLed there."""
    from headstart.engine.distributed.ray_embed import embed_on_ray
    from headstart.engine.store.features import FeatureStore

    source = texts_csv(tmp_path / "texts.csv", 800, seed=2)
    _, reference = local_embed(source)
    home = make_ray_home(tmp_path, session_home, monkeypatch)
    pauses, point = tmp_path / "pauses", "store-committed#3"
    log = tmp_path / "driver.log"
    driver = start_driver(source, ray_address, log, env=pause_env(pauses, point))
    try:
        paused = kill_when_paused(pauses, point, driver, timeout=200)
    finally:
        driver.stdout.close()
    assert driver.returncode == -signal.SIGKILL
    features = home / "features"
    store_path = next(features.iterdir())
    committed = FeatureStore.load(store_path)
    assert committed.verify().ok
    done = len(committed)
    assert done == paused["rows"] and 0 < done < 800
    result = embed_on_ray(source, workers=2, chunk_size=20, progress=False)
    assert result.stats.embedded == 800 - done  # only the missing items
    # the duplicate last row repeats row 1 (committed before the kill): each is stored already when its split starts
    assert (result.stats.cached, result.stats.duplicates) == (done + 1, 0)
    store = FeatureStore.load(store_path)
    assert len(store) == 800 and store.verify().ok and not list(store_path.rglob("*.tmp*"))
    assert_matches_local_engine(store_path, reference)


def test_config_errors_before_any_work(tmp_path, ray_address):
    from headstart.engine.distributed.ray_embed import embed_on_ray
    from headstart.engine.errors import ConfigError

    source = texts_csv(tmp_path / "texts.csv", 3)
    with pytest.raises(ConfigError, match="needs GPUs"):
        embed_on_ray(source, device="cuda")
    with pytest.raises(ConfigError, match="hold GPUs without using them"):
        embed_on_ray(source, device="cpu", gpus_per_worker=1)
    with pytest.raises(ConfigError, match="too few"):
        embed_on_ray(source, gpus_per_worker=1)  # the test cluster has no GPU


def test_shipped_export_is_materialised_and_verified(tmp_path, ray_home):
    """A node without the driver's export cache gets the files shipped; a damaged copy is refused."""
    from headstart.engine.backbones.export import export
    from headstart.engine.backbones.runtime import Encoder
    from headstart.engine.distributed.worker import materialize_export
    from headstart.engine.errors import IntegrityError

    exported = export("minilm-l6")
    files = {name: (exported.path.parent / name).read_bytes() for name in exported.manifest["files"]}
    copy = materialize_export(exported, files, tmp_path / "node-b")
    assert copy.path != exported.path and copy.path.exists()
    Encoder(copy, device="cpu", threads=1)
    damaged = materialize_export(exported, {**files, exported.path.name: b"not onnx"}, tmp_path / "node-c")
    with pytest.raises(IntegrityError):
        Encoder(damaged, device="cpu", threads=1)
