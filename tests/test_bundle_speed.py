"""int8 text bundles quantised whole (engine/bundle/quantize.py): every MatMul and Attention of the fp32
transformer int8, gated on the validation split, falling back to the backbone's int8 export when refused.

Real MiniLM exports, a real linear head trained on the shipped support tickets, the bundle run by plain
onnxruntime in a separate process that imports nothing from headstart.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.bundle.build import build_bundle
from headstart.engine.bundle.loader import load_bundle
from headstart.engine.errors import ExportParityError
from headstart.engine.train.api import predict, train

# a hang guard only: the module fixture trains a head on MiniLM features and the tests build int8 bundles
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
TEST = ROOT / "examples" / "support-tickets" / "test.csv"

# Runs with plain onnxruntime + onnxruntime-extensions: no headstart import anywhere.
PLAIN_TEXT = """
import json, sys
import numpy as np
import onnxruntime as ort
from onnxruntime_extensions import get_library_path
opts = ort.SessionOptions()
opts.register_custom_ops_library(get_library_path())
disabled = ["SkipLayerNormFusion"] if sys.argv[3] == "documented" else []  # docs/deploy.md, Session settings
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
texts = json.load(open(sys.argv[2], encoding="utf-8"))
proba, labels = session.run(["probabilities", "label"], {"text": np.array(texts, dtype=object)})
print(json.dumps({"labels": [str(v) for v in labels], "proba": proba.tolist(),
                  "headstart_loaded": any(m == "headstart" or m.startswith("headstart.") for m in sys.modules)}))
"""


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _transformer_products(path: Path) -> list[str]:
    """Names of the fp32 MatMul / Attention nodes outside the head (``head_*``) in the bundle at ``path``."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node
            if n.op_type in ("MatMul", "Attention") and not n.name.startswith("head_")]


@pytest.fixture(scope="module")
def model(tmp_path_factory, session_home) -> Path:
    """The README's support-ticket model: MiniLM (fp32 features) + linear head."""
    out = tmp_path_factory.mktemp("speed-model") / "linear"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(session_home))
        train(str(TRAIN), "linear", backbone="minilm-l6", out=out, progress=False)
    return out


def test_int8_text_bundle_quantises_every_transformer_product_and_runs_on_plain_onnxruntime(
        model, session_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_HOME", str(session_home))
    fp32 = build_bundle(model, tmp_path / "fp32.onnx")
    report = build_bundle(model, tmp_path / "int8.onnx", precision="int8")
    quantization = report.parity["quantization"]
    assert quantization["where"] == "bundle" and "refused" not in quantization
    products = _transformer_products(fp32.path)
    assert len(products) == quantization["nodes"] > 0
    assert _transformer_products(report.path) == []  # none left fp32: every one became an int8 op
    for key in ("validation", "validation_onnxruntime_defaults"):  # the gate ran both session settings
        val = report.parity[key]
        assert val["items"] == 45 and val["accuracy_delta_pt"] >= -0.5
    bundle = load_bundle(report.path)
    assert bundle.metadata["parity"]["quantization"]["where"] == "bundle"
    assert bundle.metadata["backbone"]["precision"] == "int8"
    assert report.bytes < fp32.bytes

    texts = [r["text"] for r in _rows(TEST)]
    listed = tmp_path / "texts.json"
    listed.write_text(json.dumps(texts), encoding="utf-8")
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_TEXT, encoding="utf-8")
    plain = {}
    for settings in ("documented", "default"):
        done = subprocess.run([sys.executable, str(script), str(report.path), str(listed), settings],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        plain[settings] = json.loads(done.stdout)
        assert plain[settings]["headstart_loaded"] is False
    labels, proba = bundle.predict(texts)
    # with the settings the gate used: the same numbers; with onnxruntime's defaults (what the C#, Java and JS
    # APIs give: SkipLayerNormalization fused) rounding moves dynamic int8's scales: the same labels here
    assert plain["documented"]["labels"] == labels
    assert np.abs(np.asarray(plain["documented"]["proba"]) - proba).max() <= 1e-6
    assert plain["default"]["labels"] == labels
    expected = [str(v) for v in predict(model, str(TEST)).labels]  # the fp32 model's labels
    agreement = float(np.mean([a == b for a, b in zip(labels, expected)]))
    print("int8 bundle label agreement with fp32 predict on the test texts:", agreement)
    assert agreement >= 0.95


def test_int8_bundle_refused_whole_falls_back_to_the_backbone_export_and_names_both(
        model, session_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check data on the model's decision boundary (two tickets of different classes joined, those the fp32
    model is least sure about, labelled with its own fp32 labels): int8 moves enough of them across that the
    whole-int8 graph is refused, the build falls back to the backbone's int8 export, that is refused too, and
    the error names both; no file is written."""
    monkeypatch.setenv("HEADSTART_HOME", str(session_home))
    rows = _rows(TRAIN)
    rng = np.random.default_rng(0)
    pairs = [(rows[a], rows[b]) for a, b in rng.integers(0, len(rows), size=(600, 2))]
    joined = [f"{a['text']} {b['text']}" for a, b in pairs if a["label"] != b["label"]]
    fp32 = load_bundle(build_bundle(model, tmp_path / "fp32.onnx").path)
    labels, proba = fp32.predict(joined)
    top2 = np.sort(proba, axis=1)[:, -2:]
    closest = np.argsort(top2[:, 1] - top2[:, 0])[:100]
    check = tmp_path / "boundary.csv"
    with open(check, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows([joined[i], labels[i]] for i in closest)
    out = tmp_path / "int8.onnx"
    with pytest.raises(ExportParityError) as caught:
        build_bundle(model, out, precision="int8", check_on=check)
    message = caught.value.message
    assert "before it, the whole-int8 graph was refused" in message
    assert message.count("validation accuracy") == 2, message  # both attempts' gate figures
    assert not out.exists()


def test_int8_model_bundles_the_backbones_int8_export_gated_on_the_validation_split(
        session_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model trained on int8 features predicts with the backbone's int8 export: its int8 bundle holds that
    export (not a whole-int8 graph), gated on the validation split like any int8 text bundle (dynamic int8
    rescales per call, so an exact comparison with headstart's batches cannot hold: it missed 1e-4 by 0.006)."""
    monkeypatch.setenv("HEADSTART_HOME", str(session_home))
    model8 = tmp_path / "model-int8"
    train(str(TRAIN), "linear", backbone="minilm-l6", out=model8, precision="int8", progress=False)
    report = build_bundle(model8, tmp_path / "int8.onnx", precision="int8")
    assert "quantization" not in report.parity
    for key in ("validation", "validation_onnxruntime_defaults"):
        assert report.parity[key]["items"] == 45 and report.parity[key]["accuracy_delta_pt"] >= -0.5
    assert len(_transformer_products(report.path)) > 0  # the export's recipe keeps some products fp32


def test_single_text_branch_tokenises_as_the_batch_branch_and_hugging_face(tmp_path: Path) -> None:
    """The in-graph tokenizer's ``If``: one text goes through the tokenizer op alone (no ``Loop``), several
    through the loops; both give Hugging Face's ids and mask (one text unpadded, batches padded to the
    longest), including the empty text and a text cut at ``max_length``."""
    import onnx
    from transformers import AutoTokenizer

    from headstart.engine.bundle.loader import open_session
    from headstart.engine.bundle.text_graph import text_graph
    from headstart.plugins.backbones.minilm import minilm_spec

    p = minilm_spec().preprocessing
    graph = text_graph(p.tokenizer, p.max_length, tuple(p.inputs))
    onnx.checker.check_model(graph)
    branch = next(n for n in graph.graph.node if n.op_type == "If")
    then = next(a.g for a in branch.attribute if a.name == "then_branch")
    other = next(a.g for a in branch.attribute if a.name == "else_branch")
    assert [n.op_type for n in then.node].count("Loop") == 0
    assert [n.op_type for n in other.node].count("Loop") == 2
    session = open_session(graph.SerializeToString(), threads=1)
    names = [o.name for o in session.get_outputs()]
    hf = AutoTokenizer.from_pretrained(p.tokenizer)
    texts = [r["text"] for r in _rows(TEST)][:12] + ["", "refund " * 600]
    for text in texts:
        got = dict(zip(names, session.run(None, {"text": np.array([text], dtype=object)})))
        ref = hf([text], truncation=True, max_length=p.max_length, return_tensors="np")
        for name in names:
            assert got[name].dtype == np.int64 and np.array_equal(got[name], ref[name]), (name, text[:40])
    got = dict(zip(names, session.run(None, {"text": np.array(texts, dtype=object)})))
    ref = hf(texts, truncation=True, max_length=p.max_length, padding=True, return_tensors="np")
    for name in names:
        assert np.array_equal(got[name], ref[name]), name
    assert got["input_ids"].shape == (len(texts), p.max_length)


def test_fp32_bundle_one_text_a_call_predicts_as_headstart(
        model, session_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The single-text branch inside a real bundle: one call per text (as a service calls it) gives
    ``headstart predict``'s labels and probabilities within the fp32 gate's tolerance."""
    from headstart.engine.bundle.gate import MAX_ABS_DIFF

    monkeypatch.setenv("HEADSTART_HOME", str(session_home))
    bundle = load_bundle(build_bundle(model, tmp_path / "fp32.onnx").path, threads=1)
    texts = [r["text"] for r in _rows(TEST)]
    one_by_one = [bundle.predict([t]) for t in texts]
    labels = [got[0][0] for got in one_by_one]
    proba = np.concatenate([got[1] for got in one_by_one])
    expected = predict(model, str(TEST))
    assert labels == [str(v) for v in expected.labels]
    assert np.abs(proba - np.asarray(expected.proba)).max() <= MAX_ABS_DIFF
