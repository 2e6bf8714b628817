"""The embedding job end to end: real exports, real files, real processes killed with real signals."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fixtures_faults as ff
from pause_control import pause_env, wait_paused
from headstart.engine.embed.pipeline import embed
from headstart.engine.errors import ItemError
from headstart.engine.store.features import FeatureStore

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    """Deterministic varied texts: short and long mixed."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        length = rng.choice([3, 5, 8, 12, 20, 40, 90])
        texts.append(f"{i} " + " ".join(rng.choice(WORDS) for _ in range(length)))
    return texts


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **kwargs)


def test_rows_duplicates_and_batch_independence(tmp_path):
    texts = corpus(120)
    rows = [(t, "even" if i % 2 == 0 else "odd") for i, t in enumerate(texts)]
    rows += [(texts[0], "even"), (texts[5], "odd")]  # duplicates: embedded once, every row gets its vector
    source = write_csv(tmp_path / "data.csv", rows)
    result = embed(source, progress=False, batch_size=7)
    assert len(result) == len(rows) and result.stats.rows == len(rows)
    assert result.stats.embedded + result.stats.cached == len(texts)
    assert result.stats.duplicates == 2
    assert result.labels[:2] == ["even", "odd"]
    v = result.vectors
    assert v.shape == (len(rows), 384) and np.isfinite(v).all()
    np.testing.assert_array_equal(v[-2], v[0])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)

    # The same texts embedded one by one with another thread count give the same vectors.
    from headstart.engine.backbones.export import export
    from headstart.engine.backbones.preprocess import make_preprocessor
    from headstart.engine.backbones.resolve import resolve_backbone
    from headstart.engine.backbones.runtime import Encoder

    spec = resolve_backbone("minilm-l6")
    encoder = Encoder(export(spec), device="cpu", threads=1)
    pre = make_preprocessor(spec)
    singles = np.concatenate([encoder.run(pre.collate(pre.prepare_many([t]))) for t in texts])
    assert singles.shape == (len(texts), 384)
    np.testing.assert_allclose(v[:len(texts)], singles, atol=2e-5)  # every row, not a sample


def test_warm_rerun_creates_no_session(tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(corpus(300, seed=1)) + "\n")
    cold = embed(source, progress=False)
    assert cold.stats.session_created and cold.stats.embedded == 300
    warm = embed(source, progress=False)
    assert not warm.stats.session_created
    assert (warm.stats.cached, warm.stats.embedded) == (300, 0)
    np.testing.assert_array_equal(warm.vectors, cold.vectors)
    assert "onnxruntime" not in sys.modules or warm.stats.session_created is False


def test_bad_images_are_recorded_and_the_batch_goes_on(tmp_path):
    folder = tmp_path / "images"
    good = {f"cat/ok{i}.jpg": ff.jpeg(120 + 10 * i, 90, seed=i) for i in range(4)}
    bad = {
        "cat/corrupt.jpg": ff.corrupt_jpeg(),
        "cat/truncated.jpg": ff.truncated(ff.jpeg(200, 150, seed=9)),
        "dog/page.jpg": ff.HTML_BYTES,
        "dog/doc.png": ff.PDF_BYTES,
        "dog/bomb.png": ff.bomb_png(),
    }
    odd_ok = {"dog/cmyk.jpg": ff.cmyk_jpeg(), "dog/gray16.png": ff.png16_gray(), "dog/exif6.jpg": ff.exif_jpeg(6),
              "dog/palette.png": ff.palette_transparent_png(), "dog/strip.png": ff.strip_png()}
    for name, data in {**good, **bad, **odd_ok}.items():
        ff.write(folder / name, data)
    result = embed(folder, progress=False, workers=1)
    assert result.stats.rows == len(good) + len(bad) + len(odd_ok)
    failed = {Path(e.ref).name: e.reason for e in result.errors}
    assert set(failed) == {Path(n).name for n in bad}
    assert failed["page.jpg"].startswith("not an image")
    assert failed["doc.png"].startswith("not an image")
    assert failed["bomb.png"].startswith("image too large")
    assert "truncated or corrupt" in failed["truncated.jpg"]
    assert len(result) == len(good) + len(odd_ok)
    assert np.isfinite(result.vectors).all() and result.vectors.shape[1] == 1280
    assert set(result.labels) == {"cat", "dog"}
    # The error records are in the store, listed by `cache info`, and the CLI exits 0 unless --strict.
    store = FeatureStore.load(result.store_path)
    assert len(store.error_records()) == len(bad)
    info = _cli("cache", "info", "--json")
    assert info.returncode == 0, info.stderr
    assert any(s["fingerprint"] == result.fingerprint and s["n_errors"] == len(bad) for s in json.loads(info.stdout)["stores"])
    assert _cli("embed", str(folder), "--workers", "0").returncode == 0
    strict = _cli("embed", str(folder), "--workers", "0", "--strict")
    assert strict.returncode != 0 and "5 item(s) failed" in strict.stderr
    with pytest.raises(ItemError):
        embed(folder, progress=False, workers=0, strict=True)


def test_text_faults(tmp_path):
    big = ff.big_text()
    path = tmp_path / "faults.txt"
    path.write_bytes("\n".join(["", "   ", "fine text", big, "emoji 👩‍👩‍👧 and \u200fRTL\u200f"]).encode()
                     + b"\nbad \xff\xfe bytes\n")
    result = embed(path, progress=False)
    assert [Path(e.ref).name for e in result.errors] == ["faults.txt:line 6"]
    assert "UTF-8" in result.errors[0].reason or "utf-8" in result.errors[0].reason
    assert result.stats.truncated == 1
    assert len(result) == 5 and np.isfinite(result.vectors).all()
    lenient = _cli("embed", str(path), "--encoding-errors", "replace", "--json")
    assert lenient.returncode == 0, lenient.stderr
    summary = json.loads(lenient.stdout)
    assert summary["failed"] == 0 and summary["rows"] == 6


def _store_snapshot(path: Path) -> tuple[list[str], np.ndarray]:
    store = FeatureStore.load(path)
    keys = sorted(store.keys())
    return keys, store.get(keys)


def _committed(store_path: Path) -> int:
    return len(FeatureStore.load(store_path)) if (store_path / "manifest.json").exists() else 0


@pytest.mark.parametrize(("attempts", "n_texts"), [(6, 2400), pytest.param(22, 8000, marks=[pytest.mark.slow, pytest.mark.timeout(1500)])])
def test_kill_9_loop_then_resume_equals_a_clean_run(tmp_path, attempts, n_texts):
    texts = corpus(n_texts, seed=3)
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(texts) + "\n")
    clean = embed(source, progress=False)  # also makes sure the export is cached
    clean_keys = sorted(set(clean.keys))
    clean_vectors = clean.store.get(clean_keys)  # the session store also holds other tests' items

    home = tmp_path / "killed-home"
    home.mkdir()
    (home / "exports").symlink_to(Path(os.environ["HEADSTART_HOME"]) / "exports")
    env = {"HEADSTART_HOME": str(home)}
    store_path = home / "features" / clean.fingerprint
    rng = random.Random(0)
    kills = 0
    for attempt in range(attempts):
        # Each run stops at a pause point after its 1st to 3rd shard write or commit (inside a commit: the
        # shard file written but not listed; or just after one) and is killed there, on any machine's speed.
        point = f"{rng.choice(['store-shard-written', 'store-committed'])}#{rng.randint(1, 3)}"
        pauses = tmp_path / "pauses" / str(attempt)
        proc = subprocess.Popen([sys.executable, "-m", "headstart", "embed", str(source), "--chunk-size", "40",
                                 "--no-progress"], env={**os.environ, **env, **pause_env(pauses, point)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_paused(pauses, point, proc)["pid"] == proc.pid
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        report = FeatureStore.load(store_path).verify()
        assert report.ok, report.problems
    assert kills == attempts
    partial = _committed(store_path)
    assert 0 < partial < len(texts)
    resumed = _cli("embed", str(source), "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["cached"] == partial and summary["embedded"] == len(texts) - partial
    keys, vectors = _store_snapshot(store_path)
    assert keys == clean_keys
    np.testing.assert_allclose(vectors, clean_vectors, atol=2e-5)
    assert not list(store_path.rglob("*.tmp-*"))


def test_two_concurrent_jobs_on_one_store(tmp_path):
    source = tmp_path / "shared.txt"
    source.write_text("\n".join(corpus(400, seed=5)) + "\n")
    procs = [subprocess.Popen([sys.executable, "-m", "headstart", "embed", str(source), "--chunk-size", "50",
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    summaries = [json.loads(o[0]) for o in outputs]
    assert sum(s["embedded"] for s in summaries) == 400
    store = FeatureStore.load(Path(summaries[0]["store"]))
    assert store.verify().ok
    again = embed(source, progress=False)
    assert (again.stats.cached, again.stats.embedded) == (400, 0)
    assert store.contains(again.keys, include_errors=False).all()


def test_embedding_leaves_the_index_to_the_first_search(tmp_path, headstart_home, monkeypatch):
    from headstart.engine.store import features

    source = tmp_path / "few.txt"
    texts = corpus(60, seed=11)
    source.write_text("\n".join(texts) + "\n")
    result = embed(source, progress=False)
    store = FeatureStore.open(result.store_path, fingerprint=result.fingerprint, dim=384, backbone="minilm-l6")
    assert not store.manifest.get("index")  # the job wrote shards and a manifest only
    scores, keys = store.search(result.vectors[:3], k=1)  # exact scan of the uncovered rows
    assert list(keys[:, 0]) == result.keys[:3]
    monkeypatch.setattr(features, "LAZY_INDEX_ROWS", 10)
    scores2, keys2 = store.search(result.vectors[:3], k=1)  # far behind: the index is built first
    assert store.manifest["index"]["n_vectors"] == 60 and store.verify().ok
    assert list(keys2[:, 0]) == result.keys[:3]
    np.testing.assert_allclose(scores2, scores, atol=1e-5)


def test_spawned_workers_without_a_main_guard_fail_with_a_clear_hint(tmp_path):
    folder = tmp_path / "imgs"
    for i in range(3):
        ff.write(folder / f"a{i}.jpg", ff.jpeg(64, 48, seed=i))
    script = tmp_path / "no_guard.py"
    script.write_text(f"from headstart.engine.embed.pipeline import embed\nembed({str(folder)!r}, workers=1, progress=False)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "HeadstartError: an image preprocessing worker process died" in result.stderr
    assert 'if __name__ == "__main__":' in result.stderr and "workers=0" in result.stderr


def test_calibration_sample_spreads_over_a_bounded_window():
    """Static int8 without calibration items samples the source: evenly, skipping unreadable items, and
    reading no further than the window (a huge folder is not read twice)."""
    from headstart.engine.embed.items import Item
    from headstart.engine.embed.pipeline import calibration_sample

    class Source:
        read = 0

        def estimate_count(self):
            return 100_000

        def __iter__(self):
            for i in range(100_000):
                Source.read += 1
                yield (Item.failed(f"r{i}", "unreadable", "text") if i % 10 == 3 else
                       Item.make(f"r{i}", f"text {i}", "text"))

    sample = calibration_sample(Source(), size=128, window=4096)
    assert len(sample) == 128 and len(set(sample)) == 128
    assert Source.read == 4096  # the window, not the whole source
    numbers = [int(t.split()[1]) for t in sample]
    assert numbers == sorted(numbers) and numbers[0] == 0 and numbers[-1] > 3500  # spread over the window
    assert all(n % 10 != 3 for n in numbers)  # unreadable items are never calibration data
