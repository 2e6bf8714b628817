"""Rare-event evaluation: sklearn-backed metrics, ROC-AUC / PR-AUC / operating points, a decision threshold
chosen on validation, kept in the model and used by ``predict`` in a fresh process; bad options fail first."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.errors import ConfigError, DataError
from headstart.engine.testing.tiny_backbones import projection_backbone
from headstart.engine.train.api import evaluate, sweep, train
from headstart.engine.train.metrics import (at_threshold, binary_metrics, choose_threshold, classification_metrics,
                                            operating_point, parse_threshold_rule, positive_class)


def _cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEADSTART_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _rare_table(path: Path, n: int, seed: int, classes: tuple[str, ...] = ("ok", "fraud")) -> np.ndarray:
    """A Parquet table of 16 numeric columns and a label; about 4 % 'fraud' (a noisy linear rule)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 16)).astype(np.float32)
    score = X[:, 0] + 0.5 * X[:, 1] + 0.5 * rng.standard_normal(n)
    if len(classes) == 2:
        y = np.where(score > 2.0, classes[1], classes[0])
    else:
        y = np.asarray(classes)[np.digitize(score, [-0.5, 0.5])]
    pq.write_table(pa.table({**{f"f{i}": X[:, i] for i in range(16)}, "label": y}), path)
    return y


@pytest.fixture(scope="module")
def rare(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rare")
    _rare_table(root / "train.parquet", 1600, 0)
    _rare_table(root / "test.parquet", 800, 1)
    _rare_table(root / "three.parquet", 300, 2, ("a", "b", "c"))
    backbone = projection_backbone(root / "bb", width=16, dim=64)
    return {"root": root, "train": root / "train.parquet", "test": root / "test.parquet",
            "three": root / "three.parquet", "backbone": f"onnx:{backbone}"}


# -- metrics ---------------------------------------------------------------------------------------------------

def test_classification_metrics_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(3)
    t = rng.choice(["a", "b", "c", "d"], 500)
    p = rng.choice(["a", "b", "c", "e"], 500)
    m = classification_metrics(t, p, classes=["a", "b", "c"])
    labels = sorted(set(t) | set(p))
    assert m["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert m["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
    assert m["confusion"] == confusion_matrix(t, p, labels=labels).tolist()
    assert m["unseen_labels"] == ["d"] and m["n_unseen_labels"] == int((t == "d").sum())
    assert m["per_class"]["e"]["support"] == 0 and m["per_class"]["e"]["precision"] == 0.0


def test_binary_metrics_and_operating_points_agree_with_brute_force():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(4)
    y = np.where(rng.random(2000) < 0.03, "1", "0")
    scores = np.round(rng.random(2000) + 0.6 * (y == "1"), 2)  # ties on purpose
    m = binary_metrics(y, scores, "1", ["precision=0.6", "fpr=0.02", "recall=0.5"])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y == "1", scores))
    assert m["average_precision"] == pytest.approx(average_precision_score(y == "1", scores))
    candidates = [at_threshold(y, scores, "1", t) for t in np.unique(scores)]
    for rule, key, best in (("precision=0.6", "recall", max), ("fpr=0.02", "recall", max),
                            ("recall=0.5", "precision", max)):
        kind, value = rule.split("=")
        ok = [c for c in candidates if c[kind] is not None and
              (c[kind] <= float(value) if kind == "fpr" else c[kind] >= float(value))]
        point = m["operating_points"][rule]
        assert point["met"] and point[key] == pytest.approx(best(c[key] for c in ok))
        at = at_threshold(y, scores, "1", point["threshold"])  # the threshold gives what the point says
        assert at[kind] == pytest.approx(point[kind]) and at[key] == pytest.approx(point[key])


def test_positive_class_is_the_rarer_label():
    assert positive_class(["ok"] * 9 + ["fraud"]) == "fraud"
    assert positive_class(["0", "1"]) == "1"
    assert positive_class(["yes"] * 3 + ["no"] * 5) == "yes"


def test_unreachable_precision_is_a_clear_error():
    y = np.array(["0", "1", "0", "1"])
    scores = np.array([0.9, 0.1, 0.8, 0.2])  # every positive scores below every negative
    assert not operating_point(y, scores, "1", parse_threshold_rule("precision=0.9"))["met"]
    with pytest.raises(DataError, match=r"no decision threshold reaches precision=0.9.*best precision: 0.500"):
        choose_threshold(y, scores, "1", "0", "precision=0.9")


@pytest.mark.parametrize("text, says", [("precision", "METRIC=VALUE"), ("accuracy=0.9", "METRIC=VALUE"),
                                        ("precision=high", "not a number"), ("fpr=0", "between 0 and 1"),
                                        ("recall=1.5", "between 0 and 1"), ("precision=nan", "between 0 and 1")])
def test_bad_threshold_rules_are_refused(text: str, says: str):
    with pytest.raises(ConfigError, match=says):
        parse_threshold_rule(text)


# -- train / sweep / eval / predict ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def thresholded(rare, tmp_path_factory) -> Path:
    """A linear model with a recall=0.9 threshold (well below 0.5 on this imbalanced task)."""
    out = rare["root"] / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(tmp_path_factory.mktemp("home")))
        result = train(str(rare["train"]), "linear", backbone=rare["backbone"], out=out, progress=False,
                       threshold_for="recall=0.9")
    decision = result.model.manifest["decision"]
    assert decision["positive"] == "fraud" and decision["negative"] == "ok" and decision["rule"] == "recall=0.9"
    assert decision["validation"]["recall"] >= 0.9 and 0 < decision["threshold"] < 0.5
    assert result.metrics["binary"]["roc_auc"] > 0.9
    assert "recall=0.9" in result.metrics["binary"]["operating_points"]
    return out


def test_a_model_with_a_threshold_predicts_with_it_in_a_fresh_process(rare, thresholded, tmp_path):
    manifest = json.loads((thresholded / "manifest.json").read_text())
    threshold = manifest["decision"]["threshold"]
    out = tmp_path / "predictions.csv"
    result = _cli("predict", str(thresholded), str(rare["test"]), "-o", str(out), home=tmp_path / "home",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 800
    proba = np.array([json.loads(r["probabilities"])["fraud"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    assert (labels == np.where(proba >= threshold, "fraud", "ok")).all()
    assert ((proba < 0.5) & (labels == "fraud")).sum() > 0  # the threshold, not the argmax, decided


def test_eval_reports_rare_event_metrics_and_the_models_threshold(rare, thresholded, tmp_path):
    result = _cli("eval", str(thresholded), str(rare["test"]), "--json", home=tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    binary = metrics["binary"]
    assert binary["positive"] == "fraud" and 0 < binary["prevalence"] < 0.1
    assert 0.9 < binary["roc_auc"] <= 1 and 0 < binary["average_precision"] <= 1
    assert set(binary["operating_points"]) == {"precision=0.9", "fpr=0.01", "recall=0.9"}
    at = binary["at_threshold"]
    assert at["rule"] == "recall=0.9" and at["recall"] > 0.7
    assert metrics["per_class"]["fraud"]["recall"] == pytest.approx(at["recall"])  # labels use the threshold
    text = _cli("eval", str(thresholded), str(rare["test"]), home=tmp_path / "home", cwd=tmp_path).stdout
    assert "ROC-AUC" in text and "PR-AUC" in text and "at the model's threshold" in text


def test_sweep_ranks_by_average_precision_and_saves_the_threshold(rare, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    heads = ["linear", "linear(class_weight='balanced')", "knn"]
    result = sweep(str(rare["train"]), heads, backbone=rare["backbone"], metric="average_precision",
                   threshold_for="precision=0.5", save_best=tmp_path / "best", progress=False)
    scored = [r for r in result.rows if "error" not in r]
    assert len(scored) == 3 and all(r["roc_auc"] is not None for r in scored)
    assert result.best == max(scored, key=lambda r: r["average_precision"])["head"]
    saved = json.loads((tmp_path / "best" / "manifest.json").read_text())
    assert saved["decision"]["rule"] == "precision=0.5" and saved["decision"]["validation"]["precision"] >= 0.5
    assert evaluate(tmp_path / "best", str(rare["test"]), progress=False)["binary"]["at_threshold"]["rule"] \
        == "precision=0.5"


def test_threshold_on_a_three_class_task_is_refused(rare, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match="needs a two-class task"):
        train(str(rare["three"]), "linear", backbone=rare["backbone"], threshold_for="precision=0.9", progress=False)
    with pytest.raises(DataError, match="needs a two-class task"):
        sweep(str(rare["three"]), ["linear"], backbone=rare["backbone"], metric="roc_auc", progress=False)


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("value", ["precision=2", "accuracy=0.9", "fpr=often"])
def test_bad_threshold_option_is_a_one_line_error_before_any_work(rare, tmp_path, command, value):
    home = tmp_path / "home"
    args = [command, str(rare["train"]), "-b", rare["backbone"], "--threshold-for", value]
    result = _cli(*args, *(["-o", str(tmp_path / "m")] if command == "train" else []), home=home, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: --threshold-for") and lines[1].startswith("hint:") and len(lines) == 2
    assert not home.exists() and not (tmp_path / "m").exists()  # nothing was embedded, nothing written


def test_a_head_without_probabilities_cannot_take_a_threshold(rare, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError, match="gives no probabilities"):
        train(str(rare["train"]), "sklearn:LinearSVC()", backbone=rare["backbone"], threshold_for="fpr=0.01")
    assert not (tmp_path / "home").exists()


def test_a_damaged_decision_record_is_refused_at_load(thresholded, tmp_path):
    import shutil

    from headstart.engine.errors import IntegrityError
    from headstart.engine.train.model import load_model

    copy = tmp_path / "model"
    shutil.copytree(thresholded, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["decision"]["positive"] = "nope"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="'decision' must name the positive and negative class"):
        load_model(copy)
