"""train / sweep / eval / predict on real MiniLM features of the shipped example, model folders, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.errors import BackboneError, DataError, SchemaError, UntrustedModelError
from headstart.engine.heads.base import Head
from headstart.engine.heads.features import FeatureSet
from headstart.engine.heads.spec import HeadSpec
from headstart.engine.train.api import evaluate, predict, sweep, train
from headstart.engine.train.model import load_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
TEST = ROOT / "examples" / "support-tickets" / "test.csv"
NEW = ROOT / "examples" / "support-tickets" / "new.txt"


def _cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEADSTART_HOME": str(home or os.environ["HEADSTART_HOME"])}
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True, env=env,
                          timeout=240)


_NO_SESSION = ("import sys, onnxruntime\n"
               "class NoSession:\n"
               "    def __init__(self, *a, **k):\n"
               "        raise SystemExit('an onnxruntime session was created')\n"
               "onnxruntime.InferenceSession = NoSession\n"
               "from headstart.engine.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")


def expected_best(rows: list[dict], metric: str = "accuracy") -> str:
    """The sweep's rule: the best ``metric``; on a tie the faster fit; then the first listed."""
    scored = [r for r in rows if "error" not in r]
    top = max(r[metric] for r in scored)
    return min((r for r in scored if r[metric] == top), key=lambda r: r["fit_seconds"])["head"]


def _cli_without_sessions(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI with onnxruntime.InferenceSession replaced by a guard that exits if it is ever called."""
    return subprocess.run([sys.executable, "-c", _NO_SESSION, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_home) -> Path:
    """A linear model on MiniLM features of the shipped example (export cached in the session root)."""
    out = tmp_path_factory.mktemp("model") / "linear"
    with pytest.MonkeyPatch.context() as mp:  # os.environ is restored when the model is made
        mp.setenv("HEADSTART_HOME", str(session_home))
        result = train(str(TRAIN), "linear", backbone="minilm-l6", out=out, progress=False)
    assert result.metrics["split"] == "validation" and result.metrics["n"] == 45
    return out


def test_linear_matches_sklearn_baseline_on_real_features(trained: Path):
    from sklearn.linear_model import LogisticRegression

    from headstart.engine.embed.pipeline import embed

    tr, te = embed(str(TRAIN), "minilm-l6", progress=False), embed(str(TEST), "minilm-l6", progress=False)
    baseline = LogisticRegression(max_iter=1000).fit(tr.vectors, tr.labels).score(te.vectors, te.labels)
    metrics = evaluate(trained, str(TEST), progress=False)
    assert metrics["n"] == 75 and metrics["n_errors"] == 0 and metrics["n_unseen_labels"] == 0
    assert metrics["accuracy"] >= baseline - 0.01, (metrics["accuracy"], baseline)
    assert set(metrics) >= {"accuracy", "macro_f1", "n", "n_errors", "confusion", "classes"}
    assert np.asarray(metrics["confusion"]).sum() == 75
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["backbone"]["name"] == "minilm-l6" and manifest["backbone"]["fingerprint"] == tr.fingerprint
    assert manifest["head"]["format"] == "safetensors" and manifest["classes"] == sorted(set(tr.labels))
    assert json.loads((trained / "metrics.json").read_text())["accuracy"] == manifest["metrics"]["accuracy"]


def test_fresh_process_predicts_the_same_labels(trained: Path, tmp_path: Path):
    here = predict(trained, str(TEST), progress=False)
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"pred{suffix}"
        proc = _cli("predict", str(trained), str(TEST), "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        if suffix == ".csv":
            rows = list(csv.DictReader(out.open()))
            probs = [json.loads(r["probabilities"]) for r in rows]
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            probs = [r["probabilities"] for r in rows]
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(out).to_pylist()
            probs = [dict(r["probabilities"]) for r in rows]
        assert [r["label"] for r in rows] == here.labels
        assert [r["key"] for r in rows] == here.keys and rows[0]["ref"].endswith("test.csv:row 1")
        assert abs(sum(probs[0].values()) - 1) < 1e-4


def test_eval_cli_json_and_unlabelled_predict(trained: Path, tmp_path: Path):
    proc = _cli("eval", str(trained), str(TEST), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["n"] == 75 and data["accuracy"] >= 0.9 and len(data["confusion"]) == len(data["classes"])
    assert data["n_seen_in_training"] == 0  # the held-out split shares no item with training
    proc = _cli("predict", str(trained), str(NEW), "-o", str(tmp_path / "new.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["label"] for x in (tmp_path / "new.jsonl").read_text().splitlines()] == \
        ["billing", "shipping", "technical", "account", "feedback"]


def test_eval_flags_items_the_model_was_trained_on(trained: Path, tmp_path: Path):
    """Scores on training data are optimistic: eval counts the evaluation items seen in training, by content."""
    rows = list(csv.DictReader(TRAIN.open()))[:10] + list(csv.DictReader(TEST.open()))[:20]
    mixed = tmp_path / "mixed.csv"
    with mixed.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    proc = _cli("eval", str(trained), str(mixed))
    assert proc.returncode == 0, proc.stderr
    assert "warning: 10 of the 30 evaluation items were in the model's training data" in proc.stdout
    texts = {row["text"] for row in csv.DictReader(TRAIN.open())}
    assert load_model(trained).manifest["training_keys"]["n"] == len(texts)  # refit on all: every training text
    record = trained / "training_keys.npy"
    kept = record.read_bytes()
    record.write_bytes(b"damaged")  # a damaged record means unknown, not zero
    try:
        assert evaluate(trained, str(mixed), progress=False)["n_seen_in_training"] is None
    finally:
        record.write_bytes(kept)  # the folder is shared by the module's tests

def test_sweep_on_cached_features_creates_no_session(trained: Path, tmp_path: Path):
    heads = "linear,mlp,knn(k=5),sklearn:LogisticRegression(C=2.0),sklearn:sklearn.svm.SVC(C=1.0)"
    proc = _cli_without_sessions("sweep", str(TRAIN), "--heads", heads, "--save-best", str(tmp_path / "best"), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["head"] for r in data["heads"]] == heads.split(",")
    assert sum(r["best"] for r in data["heads"]) == 1
    assert data["best"] == expected_best(data["heads"]) and next(r for r in data["heads"] if r["best"])["head"] == data["best"]
    assert all("error" not in r and r["accuracy"] > 0.8 for r in data["heads"])
    assert data["training"]["embedding"]["session_created"] is False
    assert data["training"]["embedding"]["cached"] == 225
    assert load_model(tmp_path / "best").manifest["head"]["ref"] == data["best"]
    table = _cli("sweep", str(TRAIN), "--heads", "linear,knn").stdout
    assert "best (accuracy)" in table and table.count("*") == 1


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a hang guard only: embedding 10,000 texts on a slow CI core takes minutes
def test_sweep_over_10000_cached_items_touches_no_backbone(tmp_path: Path):
    from headstart.engine.embed.pipeline import embed

    rows = list(csv.reader(TRAIN.open()))[1:]
    source = tmp_path / "big.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(10_000):
            text, label = rows[i % len(rows)]
            writer.writerow([f"{text} (ticket {i})", label])
    assert len(embed(str(source), "minilm-l6", progress=False)) == 10_000
    heads = "linear,mlp,knn,sklearn:LogisticRegression(max_iter=1000),sklearn:RidgeClassifier"
    proc = _cli_without_sessions("sweep", str(source), "--heads", heads)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("head") and len(lines) == 2 + 5 and proc.stdout.count("*") == 1


def test_unseen_label_is_counted(trained: Path, tmp_path: Path):
    source = tmp_path / "odd.csv"
    rows = list(csv.reader(TEST.open()))
    rows[1][1] = rows[2][1] = "legal"  # a class the model never saw
    with source.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    metrics = evaluate(trained, str(source), progress=False)
    assert metrics["n_unseen_labels"] == 2 and metrics["unseen_labels"] == ["legal"]
    assert "legal" in metrics["classes"] and metrics["n"] == 75


def test_label_column_missing_lists_columns(tmp_path: Path):
    source = tmp_path / "nolabel.csv"
    source.write_text("text,notes\nhello there,x\nanother one,y\n")
    with pytest.raises(SchemaError, match="columns present"):
        train(str(source), "linear", backbone="minilm-l6", progress=False)
    proc = _cli("train", str(source), "-o", str(tmp_path / "m"))
    assert proc.returncode != 0 and "columns present" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_training_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8)).astype(np.float32)
    with pytest.raises(DataError, match="only one class"):
        train(FeatureSet.from_arrays(X, ["a"] * 40))
    labels = ["a"] * 20 + ["b"] * 19 + ["lonely"]
    result = train(FeatureSet.from_arrays(X, labels), "linear")
    assert result.model.manifest["training"]["train_only_classes"] == ["lonely"]
    assert "lonely" in result.model.classes and result.metrics["n"] == 8
    X[5, 1], X[9, 0] = np.nan, -np.inf
    keys = [f"k{i}" for i in range(40)]
    with pytest.raises(DataError, match="k5, k9"):
        train(FeatureSet.from_arrays(X, labels, keys=keys))


class CentroidHead(Head):
    """A third-party head: nearest class centroid."""

    def __init__(self, *, shrink: float = 0.0, slow: float = 0.0) -> None:
        self.shrink = shrink
        self.slow = slow  # seconds of extra fitting work (the sweep's tie rule prefers the faster fit)

    def _fit(self, X, y_idx):
        if self.slow:
            import time

            time.sleep(self.slow)
        self.centroids_ = np.stack([X[y_idx == c].mean(0) for c in range(len(self.classes_))]) * (1 - self.shrink)

    def _proba(self, X):
        z = X @ self.centroids_.T * 10
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def _state(self):
        return {"centroids": self.centroids_.astype(np.float32)}, {"classes": self.classes_.tolist()}

    def _set_state(self, arrays, meta):
        self.centroids_, self.classes_ = arrays["centroids"], np.asarray(meta["classes"])
        self.n_features_in_ = self.centroids_.shape[1]


class _CentroidPlugin:
    from headstart import hookimpl

    @staticmethod
    @hookimpl
    def register_heads(register):
        register(HeadSpec(name="centroid", factory=CentroidHead, description="nearest centroid"))


def test_third_party_head_works_like_a_builtin(register_plugin, tmp_path: Path):
    from headstart.engine.testing.conformance import check_head

    register_plugin(_CentroidPlugin(), name="centroid-plugin")
    rng = np.random.default_rng(0)
    y = np.repeat(["x", "y", "z"], 50)
    X = (np.eye(3, 16)[np.repeat([0, 1, 2], 50)] + 0.3 * rng.standard_normal((150, 16))).astype(np.float32)
    fs = FeatureSet.from_arrays(X, y)
    check_head(HeadSpec(name="centroid", factory=CentroidHead))
    result = train(fs, "centroid(shrink=0.1)", out=tmp_path / "m")
    assert result.metrics["accuracy"] > 0.9
    model = load_model(tmp_path / "m")
    assert model.head.shrink == 0.1 and (model.predict(fs).labels == result.model.predict(fs).labels)
    swept = sweep(fs, ["centroid", "linear"])
    assert {r["head"] for r in swept.rows} == {"centroid", "linear"} and swept.best == expected_best(swept.rows)


def test_sweep_tie_goes_to_the_faster_fit(register_plugin):
    """Same predictions (shrinking centroids changes no argmax), same score: the faster fit is best, even listed second."""
    register_plugin(_CentroidPlugin(), name="centroid-plugin")
    rng = np.random.default_rng(1)
    X = (np.eye(3, 16)[np.repeat([0, 1, 2], 40)] + 0.6 * rng.standard_normal((120, 16))).astype(np.float32)
    swept = sweep(FeatureSet.from_arrays(X, np.repeat(["x", "y", "z"], 40)), ["centroid(slow=0.5)", "centroid(shrink=0.5)"])
    slow, fast = swept.rows
    assert slow["accuracy"] == fast["accuracy"] and slow["fit_seconds"] > fast["fit_seconds"]
    assert swept.best == "centroid(shrink=0.5)" == expected_best(swept.rows)


def test_pickled_model_folder_is_refused_by_cli_and_runs_no_code(trained: Path, tmp_path: Path):
    import hashlib
    import pickle

    model = tmp_path / "evil"
    shutil.copytree(trained, model)
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_Touch(marker))
    (model / "head.pkl").write_bytes(payload)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["head"].update(format="pickle", files={"head.pkl": hashlib.sha256(payload).hexdigest()})
    (model / "manifest.json").write_text(json.dumps(manifest))
    proc = _cli("predict", str(model), str(NEW), "-o", str(tmp_path / "p.csv"))
    assert proc.returncode != 0 and "pickle" in proc.stderr and "--trust-pickle" in proc.stderr
    with pytest.raises(UntrustedModelError):
        load_model(model)
    assert not marker.exists()


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_missing_backbone_export_is_remade_or_fails_clearly(trained: Path, headstart_home: Path, tmp_path: Path):
    model = load_model(trained)
    before = predict(model, str(NEW), progress=False).labels  # fresh root: the export is made again
    exports = list((headstart_home / "exports").rglob("manifest.json"))
    assert exports and model.backbone["fingerprint"] in str(exports[0])
    assert before == ["billing", "shipping", "technical", "account", "feedback"]
    model.manifest["backbone"]["fingerprint"] = "0" * len(model.backbone["fingerprint"])
    with pytest.raises(BackboneError, match="retrain"):
        predict(model, str(NEW), progress=False)


def test_public_api_mirrors_the_cli(tmp_path: Path):
    import headstart
    import headstart.engine.train.api  # noqa: F401 - importing the submodule must not shadow headstart.train

    rng = np.random.default_rng(0)
    X = (np.repeat(np.eye(2, 8), 30, axis=0) + 0.2 * rng.standard_normal((60, 8))).astype(np.float32)
    fs = FeatureSet.from_arrays(X, ["a"] * 30 + ["b"] * 30)
    result = headstart.train(fs, "linear", out=tmp_path / "m")
    assert result.metrics["accuracy"] == 1.0
    assert headstart.load_model(tmp_path / "m").predict(fs).labels == fs.labels
    assert headstart.evaluate(tmp_path / "m", fs)["accuracy"] == 1.0
    swept = headstart.sweep(fs, ["knn", "linear"])
    assert swept.best == expected_best(swept.rows)
    headstart.predict(tmp_path / "m", fs, out=tmp_path / "p.jsonl")
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 60
