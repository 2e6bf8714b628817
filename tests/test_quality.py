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
