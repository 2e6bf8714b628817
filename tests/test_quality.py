"""Choosing well on unseen data: the linear head's k-fold strength choice, calibration, learning curves."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.engine.heads.features import FeatureSet
from headstart.engine.heads.resolve import build_head


def _noisy_blobs(n: int, dim: int = 24, classes: int = 4, noise: float = 1.6, flip: float = 0.0,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    y = rng.integers(0, classes, n)
    X = (centres[y] + noise * rng.standard_normal((n, dim))).astype(np.float32)
    if flip:
        flipped = rng.random(n) < flip
        y = np.where(flipped, rng.integers(0, classes, n), y)
    return X, np.asarray([f"c{v}" for v in y])


def test_linear_chooses_the_strongest_strength_within_one_standard_error_of_the_best_fold_mean():
    X, y = _noisy_blobs(1500, flip=0.2)
    head = build_head("linear")[0].fit(X, y)
    path = head.l2_path_
    assert len(path) >= 3 and all({"l2", "val_loss", "val_loss_se", "val_accuracy"} <= set(p) for p in path)
    assert all(p["val_loss_se"] > 0 for p in path)  # five folds give a spread
    best = min(path, key=lambda p: p["val_loss"])
    chosen = [p for p in path if p.get("chosen")]
    assert len(chosen) == 1
    first_within = next(p for p in path if p["val_loss"] <= best["val_loss"] + best["val_loss_se"])
    assert chosen[0] is first_within and chosen[0]["l2"] >= best["l2"]  # strongest (path runs strong → weak)
    n_fold_train = 1500 * 4 / 5
    assert head.l2_ == pytest.approx(chosen[0]["l2"] * n_fold_train / 1500, rel=0.01)


def test_linear_folds_follow_val_fraction_and_zero_skips_the_choice():
    X, y = _noisy_blobs(600)
    assert build_head("linear(val_fraction=0.0)")[0].fit(X, y).l2_path_ == []
    ten = build_head("linear(val_fraction=0.1)")[0].fit(X, y)
    assert ten.l2_ == pytest.approx([p for p in ten.l2_path_ if p.get("chosen")][0]["l2"] * 0.9, rel=0.02)


def test_linear_uses_the_default_strength_when_a_rare_class_has_about_one_validation_row_per_fold():
    """5 positives in 100 (the fraud case): the folds' log-loss is noise there, so no strength is chosen;
    with 10 positives (2 per fold) the folds choose again, and a balanced 8-per-class task is unaffected."""
    X, y = _noisy_blobs(400, classes=2, seed=3)
    y = np.asarray(["ok"] * len(y), dtype=object)
    rare = build_head("linear")[0].fit(np.vstack([X[:95], X[200:205] + 2.0]), np.r_[y[:95], ["fraud"] * 5])
    default = build_head("linear(val_fraction=0.0)")[0].fit(np.vstack([X[:95], X[200:205] + 2.0]),
                                                         np.r_[y[:95], ["fraud"] * 5])
    assert rare.l2_path_ == [] and rare.l2_ == pytest.approx(default.l2_)
    enough = build_head("linear")[0].fit(np.vstack([X[:90], X[200:210] + 2.0]), np.r_[y[:90], ["fraud"] * 10])
    assert enough.l2_path_
    Xb, yb = _noisy_blobs(48, classes=6, seed=4)
    yb = np.repeat([f"c{i}" for i in range(6)], 8)
    assert build_head("linear")[0].fit(Xb, yb).l2_path_


def test_linear_keeps_single_example_classes_in_training():
    X, y = _noisy_blobs(300, classes=3)
    y = y.astype(object)
    y[0] = "lonely"
    head = build_head("linear")[0].fit(X, y)
    assert "lonely" in head.classes_.tolist() and head.l2_path_
    lonely = head.classes_.tolist().index("lonely")
    proba = head.predict_proba(X)[:, lonely]
    assert proba[0] == proba.max()  # learnt from its one example, which no fold validated on


def test_calibration_fits_a_temperature_that_lowers_validation_log_loss_and_the_model_applies_it(tmp_path):
    from headstart.engine.train.api import train
    from headstart.engine.train.calibration import apply_temperature
    from headstart.engine.train.model import load_model

    X, y = _noisy_blobs(600, dim=60, flip=0.3, seed=3)
    result = train(FeatureSet.from_arrays(X, y), "linear(l2=1e-7, max_iter=300)", out=tmp_path / "m")
    record = result.metrics["calibration"]
    assert record["applied"] and record["temperature"] > 1  # an unregularised fit on noisy labels is overconfident
    assert record["after"]["log_loss"] < record["before"]["log_loss"]
    assert record["after"]["ece"] < record["before"]["ece"]
    assert sum(b["count"] for b in record["before"]["bins"]) == record["n"] == 120
    model = load_model(tmp_path / "m")
    assert model.manifest["metrics"]["calibration"]["temperature"] == record["temperature"]
    raw = model.head.predict_proba(X[:50])
    calibrated = model.predict(FeatureSet.from_arrays(X[:50])).proba
    np.testing.assert_allclose(calibrated, apply_temperature(raw, record["temperature"]), rtol=1e-5, atol=1e-6)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()  # confidence changes, predictions do not
    assert calibrated.max(1).mean() < raw.max(1).mean()


def test_calibration_is_not_applied_to_probabilities_that_are_already_calibrated():
    from headstart.engine.train.calibration import calibrate

    rng = np.random.default_rng(0)
    logits = 2.0 * rng.standard_normal((20000, 3))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.asarray([rng.choice(3, p=p) for p in proba])  # labels drawn from the probabilities themselves
    record = calibrate(proba, y, [0, 1, 2])
    assert not record["applied"] and record["temperature"] == 1.0
    assert record["fitted_temperature"] == pytest.approx(1.0, abs=0.05)
    assert record["after"] == record["before"]


def _numeric_parquet(path, signal: float, n: int = 400, seed: int = 0):
    """Rows [1000, ±signal + noise, noise, noise] in two classes: the class lives in a direction that is tiny
    next to the constant first input, so a per-tensor int8 range (fitted to the 1000) rounds it away while
    the embeddings' cosine to fp32 stays near 1 (the export's gate passes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.stack([np.full(n, 1000.0), (2 * y - 1) * signal * (1 + 0.3 * rng.standard_normal(n)),
                  rng.standard_normal(n), rng.standard_normal(n)], 1).astype(np.float32)
    pq.write_table(pa.table({"features": pa.array(list(x), type=pa.list_(pa.float32())),
                             "label": [f"c{i}" for i in y]}), path)
    return path


def _cli(home, *args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "headstart", *args], env=dict(os.environ, HEADSTART_HOME=str(home)),
                          capture_output=True, text=True, timeout=600)


def test_int8_that_loses_accuracy_on_the_head_falls_back_to_fp32_and_says_so(tmp_path):
    import json

    from headstart.engine.testing.tiny_backbones import projection_backbone
    from headstart.engine.train.model import load_model

    backbone = f"onnx:{projection_backbone(tmp_path / 'bb', width=4, dim=4, weights=np.eye(4))}"
    data = _numeric_parquet(tmp_path / "weak.parquet", signal=1.0)
    run = _cli(tmp_path / "home", "train", str(data), "--backbone", backbone, "--precision", "int8",
               "-o", str(tmp_path / "m"), "--json")
    assert run.returncode == 0, run.stderr
    assert "warning: int8 features lose" in run.stderr and "trained on fp32 features instead" in run.stderr
    check = json.loads(run.stdout)["training"]["int8_check"]
    assert check["fallback"] and check["used"] == "fp32" and check["delta_pt"] < -0.5
    assert check["fp32_accuracy"] > 0.95 and check["int8_accuracy"] < 0.8
    model = load_model(tmp_path / "m")
    assert model.manifest["backbone"]["precision"] == "fp32"
    assert model.manifest["training"]["int8_check"] == check
    assert model.evaluate(str(data), progress=False)["accuracy"] > 0.95  # predicts through fp32 features

    strong = _numeric_parquet(tmp_path / "strong.parquet", signal=30.0)  # survives int8's rounding
    # (a fresh store: static int8 is calibrated on the data of the first export in a store)
    run = _cli(tmp_path / "home2", "sweep", str(strong), "--backbone", backbone, "--precision", "int8",
               "--heads", "linear,knn", "--json")
    assert run.returncode == 0, run.stderr
    check = json.loads(run.stdout)["training"]["int8_check"]
    assert not check["fallback"] and check["used"] == "int8" and check["head"] == "linear"
    assert f"{check['delta_pt']:+.2f} pt" in run.stderr and "int8 kept" in run.stderr


def _blobs(n: int, dim: int, classes: int, noise: float, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((classes, dim))
    y = rng.integers(0, classes, n)
    return (centres[y] + noise * rng.standard_normal((n, dim))).astype(np.float32), [f"c{v}" for v in y]


def test_curve_says_more_labels_will_help_on_a_task_that_keeps_improving_and_doubling_confirms_it():
    from headstart.engine.train.api import sweep
    from headstart.engine.train.curve import format_curve

    X, y = _blobs(600, 300, 10, 5.0)  # 300-d, 10 classes, ~48 examples a class: far from saturated
    result = sweep(FeatureSet.from_arrays(X, y), ["linear"], curve=True)
    curve = result.curve
    head = curve["heads"]["linear"]
    assert len(curve["sizes"]) == 6 and curve["sizes"] == sorted(curve["sizes"]) and curve["sizes"][-1] == result.training["n_train"]
    assert head["mean"][-1] > head["mean"][0] + 0.2
    assert curve["advice"]["kind"] == "more_labels" and head["trend"]["gain_2x_pt"] >= 1.0
    assert "more labels will help" in format_curve(curve)
    # the prediction holds: twice the labels (new draws from the same task), same validation rows
    X2, y2 = _blobs(600, 300, 10, 5.0, seed=1)
    train, val = np.asarray(sorted(set(range(600)) - set(_val_rows(y))), int), _val_rows(y)
    doubled = build_head("linear")[0].fit(np.concatenate([X[train], X2]), np.asarray([y[i] for i in train] + y2))
    single = build_head("linear")[0].fit(X[train], np.asarray(y)[train])
    gain = doubled.score(X[val], np.asarray(y)[val]) - single.score(X[val], np.asarray(y)[val])
    assert gain >= 0.01


def _val_rows(y: list[str]) -> np.ndarray:
    from headstart.engine.train.splits import stratified_split

    return stratified_split(np.asarray(y), 0.2, 0).val


def test_curve_says_frozen_features_are_enough_on_a_saturated_task():
    from headstart.engine.train.api import sweep

    X, y = _blobs(300, 8, 3, 0.2)
    curve = sweep(FeatureSet.from_arrays(X, y), ["knn"], curve=True).curve
    assert curve["heads"]["knn"]["mean"][-1] == 1.0 and curve["advice"]["kind"] == "enough"


def test_curve_on_blind_frozen_features_advises_finetuning_and_the_escalation_records_the_same_evidence(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_data import blind_task, tiny_bert_blind

    from headstart.engine.plugins import set_engine
    from headstart.engine.train.finetune import FinetuneOptions, escalate

    bert = tiny_bert_blind(tmp_path / "bert")
    data = blind_task(tmp_path / "train.csv", 160, 0)
    run = _cli(tmp_path / "home", "sweep", str(data), "-b", f"hf:{bert}", "--heads", "linear", "--curve")
    assert run.returncode == 0, run.stderr
    assert "learning curve" in run.stdout and "plateaued" in run.stdout and "headstart finetune" in run.stdout
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(tmp_path / "home"))
        set_engine(None)
        try:
            result = escalate(str(data), ("accuracy", 0.9), out=tmp_path / "model", backbone=f"hf:{bert}", heads=["linear"],
                              options=FinetuneOptions(epochs=5, lr=3e-3, batch_size=16, patience=2), progress=False)
        finally:
            set_engine(None)
    assert len(result.stages) == 2, result.decision
    sweep_stage, tune_stage = result.stages
    curve = sweep_stage["curve"]
    assert curve["advice"]["kind"] == "plateau" and "headstart finetune" in curve["advice"]["text"]
    expected_with_more_labels = curve["heads"]["linear"]["trend"]["accuracy_at_2n"]
    assert expected_with_more_labels < 0.75  # more labels would not help the frozen features ...
    assert tune_stage["accuracy"] > expected_with_more_labels + 0.15  # ... fine-tuning does
    json.dumps(result.summary())  # the evidence is part of the JSON summary


def test_calibration_on_a_small_error_free_validation_split_stays_near_one():
    from headstart.engine.train.calibration import T_MIN, calibrate, fit_temperature

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((40, 3))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = proba.argmax(1)  # every validation item right: the log-loss alone would sharpen without limit
    assert fit_temperature(proba, y) > 0.5 > T_MIN
    record = calibrate(proba, y, [0, 1, 2])
    assert record["held_out_log_loss"] is not None and record["fitted_temperature"] > 0.5


def test_plateau_advice_names_the_contrastive_objective_when_labels_per_class_are_few():
    """The advice names the fine-tune objective the escalation would choose (few labels: contrastive)."""
    from headstart.engine.train.curve import CONTRASTIVE_MAX_PER_CLASS, advise

    flat = {"gain_2x_pt": 0.1}
    few = advise(flat, 0.6, target=0.9, per_class=CONTRASTIVE_MAX_PER_CLASS)
    many = advise(flat, 0.6, target=0.9, per_class=CONTRASTIVE_MAX_PER_CLASS + 1)
    assert few["kind"] == many["kind"] == "plateau"
    assert "--objective contrastive" in few["text"] and "--objective" not in many["text"]
