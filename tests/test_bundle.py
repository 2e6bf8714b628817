"""``headstart bundle``: one ONNX file that predicts as ``headstart predict`` does, on onnxruntime alone.

Real MiniLM / EfficientNet-Lite0 exports, real heads trained on the shipped support tickets, real bundles run
by plain onnxruntime in a separate process that imports nothing from headstart.
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

from headstart.engine.bundle.build import build_bundle
from headstart.engine.bundle.loader import load_bundle
from headstart.engine.errors import BundleError, ExportParityError
from headstart.engine.train.api import predict, train

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
TEST = ROOT / "examples" / "support-tickets" / "test.csv"
NEW = ROOT / "examples" / "support-tickets" / "new.txt"

# Runs with plain onnxruntime + onnxruntime-extensions: no headstart import anywhere.
PLAIN_TEXT = """
import json, sys
import numpy as np
import onnxruntime as ort
from onnxruntime_extensions import get_library_path
opts = ort.SessionOptions()
opts.register_custom_ops_library(get_library_path())
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
texts = [line.rstrip("\\n") for line in open(sys.argv[2], encoding="utf-8") if line.strip()]
proba, labels = session.run(["probabilities", "label"], {"text": np.array(texts, dtype=object)})
meta = session.get_modelmeta().custom_metadata_map
print(json.dumps({"labels": [str(v) for v in labels], "proba": proba.tolist(), "meta": meta,
                  "headstart_loaded": any(m == "headstart" or m.startswith("headstart.") for m in sys.modules)}))
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


def _texts(path: Path) -> list[str]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return [row["text"] for row in csv.DictReader(fh)]
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def models(tmp_path_factory, session_home) -> dict[str, Path]:
    """Heads on MiniLM features of the shipped support tickets (the README's model is ``linear``)."""
    root = tmp_path_factory.mktemp("bundle-models")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(session_home))
        for name, ref in {"linear": "linear", "mlp": "mlp(hidden=(64,))", "knn": "knn",
                          "lr": "sklearn:LogisticRegression(max_iter=1000)", "svc": "sklearn:LinearSVC",
                          "centroid": "sklearn:NearestCentroid"}.items():
            train(str(TRAIN), ref, backbone="minilm-l6", out=root / name, progress=False)
            out[name] = root / name
    return out


def test_readme_model_bundle_runs_on_plain_onnxruntime_with_the_same_labels(models, tmp_path: Path) -> None:
    """Acceptance 1 (text): CLI bundle passes its gate; plain onnxruntime + extensions, fed raw strings in a
    process without headstart, gives `headstart predict`'s labels (and probabilities within 1e-4)."""
    bundle = tmp_path / "support.onnx"
    done = _cli("bundle", str(models["linear"]), "-o", str(bundle), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["parity"]["training"]["items"] == 225 and report["parity"]["training"]["max_abs_diff"] <= 1e-4
    assert report["parity"]["probe"]["label_mismatches"] == 0
    done = _cli("predict", str(models["linear"]), str(NEW), "-o", str(tmp_path / "pred.csv"))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "pred.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    plain = subprocess.run([sys.executable, "-c", PLAIN_TEXT, str(bundle), str(NEW)], capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 0, plain.stderr
    got = json.loads(plain.stdout)
    assert not got["headstart_loaded"]
    assert got["labels"] == [r["label"] for r in rows] and len(rows) == len(_texts(NEW))
    probs = np.array([[json.loads(r["probabilities"])[c] for c in json.loads(got["meta"]["classes"])] for r in rows])
    assert np.abs(probs - np.array(got["proba"])).max() <= 1e-4
    meta = got["meta"]
    with open(TRAIN, newline="", encoding="utf-8") as fh:
        assert json.loads(meta["classes"]) == sorted({row["label"] for row in csv.DictReader(fh)})
    assert json.loads(meta["backbone"])["name"] == "minilm-l6" and json.loads(meta["head"])["name"] == "linear"
    assert meta["headstart_version"] and json.loads(meta["parity"])["training"]["label_agreement"] == 1.0


@pytest.mark.parametrize("name", ["mlp", "knn", "lr", "svc"])
def test_every_head_bundles_and_predicts_like_headstart(models, name: str, tmp_path: Path) -> None:
    """Acceptance 2: mlp, knn, sklearn LogisticRegression and LinearSVC bundles agree with `headstart predict`
    on the held-out tickets; LinearSVC's `probabilities` are the softmax of its decision function."""
    out = tmp_path / f"{name}.onnx"
    report = build_bundle(models[name], out)
    assert out.is_file() and report.parity["training"]["max_abs_diff"] <= 1e-4
    bundle = load_bundle(out)
    labels, proba = bundle.predict(_texts(TEST))
    expected = predict(models[name], str(TEST))
    assert labels == [str(v) for v in expected.labels]
    assert proba.shape == (len(labels), len(bundle.classes)) and np.allclose(proba.sum(1), 1, atol=1e-5)
    if name == "svc":
        assert expected.proba is None and bundle.metadata["probabilities"].startswith("softmax of decision_function")
        from headstart.engine.train.model import load_model

        d = load_model(models[name]).head.decision_function(expected_vectors(models[name]))
        e = np.exp(d - d.max(1, keepdims=True))
        assert np.abs(proba - e / e.sum(1, keepdims=True)).max() <= 1e-4
    else:
        assert np.abs(proba - expected.proba).max() <= 1e-4


def expected_vectors(model_dir: Path) -> np.ndarray:
    from headstart.engine.embed.pipeline import embed

    return embed(str(TEST), "minilm-l6", progress=False).vectors


def test_unsupported_sklearn_head_is_refused_and_lists_what_is_supported(models, tmp_path: Path) -> None:
    out = tmp_path / "centroid.onnx"
    with pytest.raises(BundleError) as err:
        build_bundle(models["centroid"], out)
    assert "NearestCentroid" in err.value.message and "LogisticRegression" in err.value.hint
    assert not out.exists()
    done = _cli("bundle", str(models["centroid"]), "-o", str(out))
    assert done.returncode != 0 and "error:" in done.stderr and "hint:" in done.stderr and "Traceback" not in done.stderr


def test_gate_failure_writes_no_file(models, tmp_path: Path) -> None:
    """Training items the in-graph tokenizer reads differently (Greek capitals are not lowercased) fail the
    gate: ExportParityError naming the item, and no file, not even over an existing one."""
    data = tmp_path / "greek.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows([["ΠΛΗΡΩΜΗ ΑΠΟΤΥΧΕ ΣΤΗΝ ΚΑΡΤΑ", "billing"], ["My invoice is wrong", "billing"]])
    out = tmp_path / "kept.onnx"
    out.write_bytes(b"old")
    with pytest.raises(ExportParityError) as err:
        build_bundle(models["linear"], out, check_on=data)
    assert "greek.csv:row" in err.value.message
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_knn_above_the_size_limit_is_refused(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.engine.bundle import head_graph

    monkeypatch.setattr(head_graph, "KNN_MAX_CELLS", 1000)  # 225 x 384 training values
    with pytest.raises(BundleError, match="too large to bundle"):
        build_bundle(models["knn"], tmp_path / "knn.onnx")
    assert not (tmp_path / "knn.onnx").exists()


def test_bad_output_names_are_refused_before_any_work(models, tmp_path: Path) -> None:
    done = _cli("bundle", str(models["linear"]), "-o", str(tmp_path / "model.bin"))
    assert done.returncode == 2 and "does not end in .onnx" in done.stderr
    done = _cli("bundle", str(tmp_path / "nothing"), "-o", str(tmp_path / "m.onnx"))
    assert done.returncode != 0 and "not a headstart model folder" in done.stderr
