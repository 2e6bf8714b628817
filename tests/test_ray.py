"""`embed --engine ray` on a real local Ray cluster: parity with the local engine, worker and driver kills.

One cluster for the whole session (8 logical CPUs on a small machine, no dashboard, ~200 MB object
store); every test has a 120 s timeout so a Ray hang fails fast instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fixtures_faults as F

pytestmark = pytest.mark.timeout(120)
ACTOR = "MapWorker(MapBatches(EmbedWorker))"


@pytest.fixture(scope="session")
def ray_address() -> str:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import logging

    import ray

    ray.init(num_cpus=8, include_dashboard=False, object_store_memory=200 << 20, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


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
    from headstart.engine.distributed import ray_embed
    from headstart.engine.distributed.ray_embed import embed_on_ray

    source = image_folder(tmp_path / "images")
    reference, ref_vectors = local_embed(source)
    home = make_ray_home(tmp_path, session_home, monkeypatch)
    waves, run = [], ray_embed._run
    monkeypatch.setattr(ray_embed, "WAVE_BLOCKS", 2)  # the object store holds 2 blocks at a time, not the source
    monkeypatch.setattr(ray_embed, "_run", lambda blocks, *a: (waves.append(len(blocks)), run(blocks, *a)))
    result = embed_on_ray(source, workers=2, chunk_size=8, progress=False)
    assert waves == [2, 2]
    assert result.fingerprint == reference.fingerprint
    assert result.keys == reference.keys and result.labels == reference.labels
    assert [(e.ref, e.reason) for e in result.errors] == [(e.ref, e.reason) for e in reference.errors]
    assert len(result.errors) == 1 and result.stats.embedded == 30
    np.testing.assert_allclose(result.vectors, np.stack([ref_vectors[k] for k in result.keys]), atol=1e-4)
    assert shard_count(store_path_of(home, result.fingerprint)) == 4  # 31 items in blocks of 8: one shard each
    again = embed_on_ray(source, workers=2, chunk_size=8, progress=False)
    assert (again.stats.embedded, again.stats.cached, again.stats.session_created) == (0, 31, False)
    assert [e.reason for e in again.errors] == [e.reason for e in reference.errors]


def actor_pids() -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if ACTOR in cmdline:
            pids.append(proc.info["pid"])
    return pids


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_worker_sigkill_is_retried_and_store_is_complete(tmp_path, ray_address, ray_home):
    from headstart.engine.backbones.resolve import resolve_backbone
    from headstart.engine.distributed.ray_embed import embed_on_ray
    from headstart.engine.store.features import FeatureStore

    source = texts_csv(tmp_path / "texts.csv", 800, seed=1)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = embed_on_ray(source, workers=2, chunk_size=20, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    features = ray_home / "features"
    wait_for(lambda: features.is_dir() and any(shard_count(p) >= 2 for p in features.iterdir()), 90,
             "the first committed blocks")
    store_path = next(features.iterdir())
    victims = actor_pids()
    assert victims, "no Ray actor process found"
    os.kill(victims[0], signal.SIGKILL)
    killed_at = shard_count(store_path)
    assert thread.is_alive() and killed_at < 40, "the job finished before the worker was killed"
    wait_for(lambda: any(p not in victims for p in actor_pids()) or not thread.is_alive(), 60, "a restarted actor")
    thread.join(100)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.stats.embedded == 800 and result.stats.failed == 0 and len(result.keys) == 801
    store = FeatureStore.load(store_path)
    assert len(store) == 800 and store.verify().ok
    assert store.fingerprint == result.fingerprint and resolve_backbone("minilm-l6").dim == store.dim


def test_driver_sigkill_then_rerun_embeds_only_missing(tmp_path, ray_address, ray_home):
    from headstart.engine.distributed.ray_embed import embed_on_ray
    from headstart.engine.store.features import FeatureStore

    source = texts_csv(tmp_path / "texts.csv", 800, seed=2)
    script = ("import sys; from headstart.engine.distributed.ray_embed import embed_on_ray; "
              "embed_on_ray(sys.argv[1], address=sys.argv[2], workers=2, chunk_size=20, progress=False)")
    driver = subprocess.Popen([sys.executable, "-c", script, str(source), ray_address], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    features = ray_home / "features"
    try:
        wait_for(lambda: driver.poll() is not None or (
            features.is_dir() and any(shard_count(p) >= 3 for p in features.iterdir())), 100, "committed blocks")
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stderr.close()
    store_path = next(features.iterdir())
    committed = FeatureStore.load(store_path)
    assert committed.verify().ok
    done = len(committed)
    assert 0 < done < 800
    result = embed_on_ray(source, workers=2, chunk_size=20, progress=False)
    assert (result.stats.cached, result.stats.embedded) == (done, 800 - done)
    store = FeatureStore.load(store_path)
    assert len(store) == 800 and store.verify().ok and not list(store_path.rglob("*.tmp*"))


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
