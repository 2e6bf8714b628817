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

# a hang guard only: the module fixtures train several heads on MiniLM / EfficientNet features and build bundles
pytestmark = pytest.mark.timeout(1200)

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


# -- images ------------------------------------------------------------------------------------------------

PLAIN_IMAGE = """
import json, sys
import numpy as np
import onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
labels = []
for path in sys.argv[2:]:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    proba, label = session.run(["probabilities", "label"], {"image": pixels})
    labels.append(str(label[0]))
print(json.dumps({"labels": labels,
                  "headstart_loaded": any(m == "headstart" or m.startswith("headstart.") for m in sys.modules)}))
"""


def photo_folder(root: Path, per_class: int, seed: int) -> Path:
    """JPEG crops (120-480 px a side, portrait and landscape) of scikit-learn's two sample photographs,
    one class folder per photo."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    for name, photo in zip(("china", "flower"), load_sample_images().images):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            h, w = (int(v) for v in rng.integers(120, 420, size=2))
            y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
            Image.fromarray(photo[y:y + h, x:x + w]).save(root / name / f"{j:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory, session_home) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    train_dir, new_dir = photo_folder(root / "train", 16, 0), photo_folder(root / "new", 6, 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(session_home))
        train(str(train_dir), "linear", backbone="efficientnet-lite0", out=root / "model", progress=False)
    return {"model": root / "model", "new": new_dir}


def test_image_bundle_runs_on_plain_onnxruntime_with_the_same_labels(photo_model, tmp_path: Path) -> None:
    """Acceptance 1 (images): a model trained on a real photo folder bundles through its gate; plain
    onnxruntime fed Pillow-decoded pixels, in a process without headstart, gives `headstart predict`'s labels."""
    bundle = tmp_path / "photos.onnx"
    done = _cli("bundle", str(photo_model["model"]), "-o", str(bundle), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["modality"] == "image" and report["parity"]["training"]["label_mismatches"] == 0
    assert report["parity"]["training"]["max_abs_diff"] <= report["parity"]["threshold_max_abs_diff"] <= 5e-3
    assert report["parity"]["probe"]["label_mismatches"] == 0
    assert max(report["parity"][g]["max_pixel_levels"] for g in ("training", "probe")) <= 1
    done = _cli("predict", str(photo_model["model"]), str(photo_model["new"]), "-o", str(tmp_path / "pred.csv"))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "pred.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    plain = subprocess.run([sys.executable, "-c", PLAIN_IMAGE, str(bundle), *[r["ref"] for r in rows]],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    got = json.loads(plain.stdout)
    assert not got["headstart_loaded"] and got["labels"] == [r["label"] for r in rows]


def test_image_graph_reproduces_headstart_pixels(photo_model) -> None:
    """The in-graph resize + crop + normalisation equals headstart's preprocessing exactly on landscape and
    square images and within one 8-bit level (1/128 after normalisation) on portrait ones."""
    import io

    import onnxruntime as ort
    from PIL import Image

    from headstart.engine.bundle.feeds import decoded_pixels
    from headstart.engine.bundle.image_graph import image_graph
    from headstart.engine.embed.imaging import prepare_image
    from headstart.plugins.backbones.efficientnet import efficientnet_spec

    prep = efficientnet_spec().preprocessing
    session = ort.InferenceSession(image_graph(prep).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for h, w in [(240, 320), (300, 300), (224, 224), (1, 1), (3, 2000), (480, 640), (300, 200), (1000, 333)]:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        data = buf.getvalue()
        got = session.run(None, {"image": decoded_pixels(data, prep)})[0][0]
        diff = np.abs(got - prepare_image(data, prep)).max()
        assert diff == 0.0 if w >= h else diff <= 1 / 128 + 1e-6, (h, w, diff)


# -- fine-tuned ------------------------------------------------------------------------------------------

def tiny_wordpiece_bert(folder: Path, words: list[str]) -> Path:
    """A 2-layer random BERT with a WordPiece tokenizer (vocab.txt + tokenizer.json) in hub layout."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def test_finetuned_model_bundles_and_predicts_like_headstart(tmp_path: Path, monkeypatch) -> None:
    from finetune_data import FILLERS, easy_task

    from headstart.engine.train.finetune import FinetuneOptions, finetune

    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    bert = tiny_wordpiece_bert(tmp_path / "bert", FILLERS)
    data = easy_task(tmp_path / "train.csv", 64, 0)
    result = finetune(str(data), f"hf:{bert}", "linear", out=tmp_path / "tuned",
                      options=FinetuneOptions(epochs=2, lr=3e-3, batch_size=16, patience=1))
    assert result.model.backbone["name"].startswith("finetuned:")
    report = build_bundle(result.path, tmp_path / "tuned.onnx", check_on=data)
    assert report.parity["training"]["max_abs_diff"] <= 1e-4 and report.parity["training"]["items"] == 64
    texts = _texts(easy_task(tmp_path / "new.csv", 20, 5))
    labels, proba = load_bundle(tmp_path / "tuned.onnx").predict(texts)
    expected = predict(result.path, str(tmp_path / "new.csv"))
    assert labels == [str(v) for v in expected.labels] and np.abs(proba - expected.proba).max() <= 1e-4


def test_int8_bundle_reports_agreement_and_accuracy_on_the_validation_split(models, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    report = build_bundle(models["linear"], out, precision="int8")
    val = report.parity["validation"]
    assert val["items"] == 45 and val["label_agreement"] >= 0.9 and val["accuracy_delta_pt"] >= -0.5
    assert load_bundle(out).metadata["backbone"]["precision"] == "int8"
    assert out.stat().st_size < build_bundle(models["linear"], tmp_path / "fp32.onnx").bytes


def test_bundle_applies_the_models_calibration_and_decision_threshold(session_home, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-class model with a validation-chosen threshold (and the temperature it was calibrated with) bundles
    into a graph that gives `headstart predict`'s probabilities and threshold labels, not the argmax."""
    from headstart.engine.train.model import load_model

    monkeypatch.setenv("HEADSTART_HOME", str(session_home))
    rows = list(csv.DictReader(open(TRAIN, newline="", encoding="utf-8")))
    binary = tmp_path / "billing.csv"
    with open(binary, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows([r["text"], "billing" if r["label"] == "billing" else "other"] for r in rows)
    model_dir = tmp_path / "model"
    train(str(binary), "linear", backbone="minilm-l6", out=model_dir, threshold_for="recall=0.99", progress=False)
    model = load_model(model_dir)
    assert model.decision and model.decision["positive"] == "billing"
    out = tmp_path / "billing.onnx"
    build_bundle(model_dir, out)
    texts = [r["text"] for r in rows] + _texts(TEST)
    labels, proba = load_bundle(out).predict(texts)
    listed = tmp_path / "texts.txt"
    listed.write_text("\n".join(texts) + "\n", encoding="utf-8")
    expected = predict(model_dir, str(listed))
    assert labels == [str(v) for v in expected.labels]
    assert np.abs(proba - expected.proba).max() <= 1e-4
    argmax = np.asarray(model.classes)[proba.argmax(1)]
    print("labels the threshold changes:", int((argmax != np.asarray(labels)).sum()),
          "temperature:", model.manifest["metrics"]["calibration"]["temperature"])
