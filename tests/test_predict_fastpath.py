"""`headstart predict`'s fast path (engine/train/fastpath.py): small sources are embedded in memory and never
touch the feature store, with the rows, keys, labels and probabilities of the store path; the item threshold
picks the path as docs/deploy.md says; ``--no-store`` / ``--use-store`` force either.

Real components: the shipped MiniLM on the README's support-ticket texts (with a duplicate and an unreadable
row), a tiny real ``onnx:`` backbone over numeric Parquet for the threshold (1000 rows cost nothing there), the
CLI in a child process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import headstart as hs
from headstart.engine.train.fastpath import FAST_PATH_MAX_BYTES, FAST_PATH_MAX_ITEMS

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
TEST = ROOT / "examples" / "support-tickets" / "test.csv"
WIDTH = 16

pytestmark = pytest.mark.timeout(900)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime (ns): what a store write would change."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _same_predictions(fast: Path, store: Path) -> None:
    a, b = _rows(fast), _rows(store)
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert (x["key"], x["ref"], x["label"], x["error"]) == (y["key"], y["ref"], y["label"], y["error"])
        if x["probabilities"] or y["probabilities"]:
            px, py = json.loads(x["probabilities"]), json.loads(y["probabilities"])
            assert px.keys() == py.keys()
            np.testing.assert_allclose([px[k] for k in px], [py[k] for k in px], atol=1e-6)


@pytest.fixture(scope="module")
def support_model(tmp_path_factory: pytest.TempPathFactory, session_home: Path) -> dict[str, Path]:
    """The README's support-ticket model (MiniLM + linear) and a source of its test texts plus a duplicate and
    an empty text."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(session_home))
        from headstart.engine.plugins import set_engine

        set_engine(None)
        folder = tmp_path_factory.mktemp("support")
        hs.train(str(TRAIN), "linear", backbone="minilm-l6", out=folder / "model", progress=False)
        texts = [r["text"] for r in _rows(TEST)]
        source = folder / "new.csv"
        with open(source, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([["text"], *([t] for t in [*texts[:20], texts[3], "", "   fresh words here"])])
    set_engine(None)
    return {"model": folder / "model", "source": source, "home": session_home}


def test_fast_path_predicts_what_the_store_path_predicts_and_leaves_the_store_alone(support_model, tmp_path) -> None:
    from headstart.engine.plugins import get_engine
    from headstart.engine.train.model import load_model

    store = get_engine().settings.features_dir / load_model(support_model["model"]).backbone["fingerprint"]
    before = _snapshot(store.parent)
    fast = hs.predict(support_model["model"], str(support_model["source"]), tmp_path / "fast.csv", store=False)
    assert _snapshot(store.parent) == before  # no store file created, replaced or touched
    slow = hs.predict(support_model["model"], str(support_model["source"]), tmp_path / "store.csv", store=True)
    assert _snapshot(store.parent) != before  # the store path did write (the new texts): the check can fail
    _same_predictions(tmp_path / "fast.csv", tmp_path / "store.csv")
    assert fast.labels == slow.labels and len(fast.labels) == 23 and len(fast.errors) == len(slow.errors)
    np.testing.assert_allclose(fast.proba, slow.proba, atol=1e-6)


def test_cli_no_store_leaves_the_store_alone_and_use_store_fills_it(support_model, tmp_path) -> None:
    """The real CLI in a child process: --no-store writes predictions and no store file; --use-store on a
    source of a few items (which would take the fast path by default) goes through the store."""
    from headstart.engine.plugins import get_engine

    features = get_engine().settings.features_dir
    source = tmp_path / "three.csv"
    source.write_text("text\nmy parcel never came (cli fast path test)\nrefund the double charge (cli test)\n"
                      "the app crashes on start (cli test)\n", encoding="utf-8")
    env = dict(os.environ, HEADSTART_HOME=str(support_model["home"]))
    before = _snapshot(features)
    run = lambda *flags: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "headstart", "predict", str(support_model["model"]), str(source), "-o",
         str(tmp_path / f"out{len(flags)}{flags[0] if flags else ''}.csv"), *flags],
        env=env, capture_output=True, text=True, timeout=600)
    done = run("--no-store")
    assert done.returncode == 0, done.stderr
    assert _snapshot(features) == before
    done = run()  # the default for three items: the fast path too
    assert done.returncode == 0, done.stderr
    assert _snapshot(features) == before
    done = run("--use-store")
    assert done.returncode == 0, done.stderr
    assert _snapshot(features) != before
    _same_predictions(tmp_path / "out1--no-store.csv", tmp_path / "out1--use-store.csv")
    _same_predictions(tmp_path / "out0.csv", tmp_path / "out1--use-store.csv")


def _numeric_parquet(path: Path, n: int, seed: int, nan_and_duplicate: bool = False) -> Path:
    """``n`` random rows; with ``nan_and_duplicate`` row 1 holds a NaN (an error record: the backbone's output
    is NaN) and the last row repeats row 0."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)
    if nan_and_duplicate:
        x[1, 3] = np.nan
        x[-1] = x[0]
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), WIDTH)
    pq.write_table(pa.table({"x": column, "label": [f"c{i % 3}" for i in range(n)]}), path)
    return path


def test_threshold_picks_the_path_as_documented(tmp_path, home, tiny_backbone) -> None:
    """A source of FAST_PATH_MAX_ITEMS items is predicted without the store (none is created); one more item
    and the store is used (created); both give the labels the store gives. docs/deploy.md and the CLI's
    help state the same number."""
    import shutil

    from headstart.engine.plugins import get_engine

    hs.train(str(_numeric_parquet(tmp_path / "train.parquet", 300, 0)), "linear", backbone=tiny_backbone,
             out=tmp_path / "model", progress=False)
    features = get_engine().settings.features_dir
    shutil.rmtree(features)  # the training store: gone, so a store path run would create it again
    at_limit = _numeric_parquet(tmp_path / "at.parquet", FAST_PATH_MAX_ITEMS, 1, nan_and_duplicate=True)
    over = _numeric_parquet(tmp_path / "over.parquet", FAST_PATH_MAX_ITEMS + 1, 2)
    fast = hs.predict(tmp_path / "model", str(at_limit), tmp_path / "at.csv")
    assert not features.exists()
    hs.predict(tmp_path / "model", str(over), tmp_path / "over.csv")
    assert _snapshot(features)  # the store path made the store
    stored = hs.predict(tmp_path / "model", str(at_limit), tmp_path / "at-store.csv", store=True)
    assert fast.labels == stored.labels and len(fast.labels) == FAST_PATH_MAX_ITEMS - 1
    assert [(e.ref, e.reason, e.stage) for e in fast.errors] == [(e.ref, e.reason, e.stage) for e in stored.errors]
    assert len(fast.errors) == 1
    _same_predictions(tmp_path / "at.csv", tmp_path / "at-store.csv")  # the error row too

    docs = " ".join((ROOT / "docs" / "deploy.md").read_text(encoding="utf-8").split())
    assert f"at most {FAST_PATH_MAX_ITEMS} items and {FAST_PATH_MAX_BYTES // 2**20} MiB of payloads" in docs
    help_text = subprocess.run([sys.executable, "-m", "headstart", "predict", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    assert f"at most {FAST_PATH_MAX_ITEMS} items ({FAST_PATH_MAX_BYTES // 2**20} MiB)" in " ".join(help_text.split())


def test_byte_bound_sends_large_payloads_to_the_store(tmp_path, home, tiny_backbone) -> None:
    """Few items whose payloads pass the byte bound are not held in memory: the store path runs."""
    from headstart.engine.train.fastpath import in_memory_features
    from headstart.engine.train.model import load_model

    hs.train(str(_numeric_parquet(tmp_path / "train.parquet", 60, 0)), "linear", backbone=tiny_backbone,
             out=tmp_path / "model", progress=False)
    model = load_model(tmp_path / "model")
    source = str(_numeric_parquet(tmp_path / "few.parquet", 10, 3))
    assert in_memory_features(model, source, max_bytes=10 * WIDTH * 4) is not None
    assert in_memory_features(model, source, max_bytes=10 * WIDTH * 4 - 1) is None
    assert in_memory_features(model, source, limit=9) is None
