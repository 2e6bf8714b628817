"""Temperature scaling of a head's probabilities, fitted on validation, kept only when it helps.

One scalar T > 0: ``calibrated = softmax(log(p) / T)`` (for a softmax head that is softmax(logits / T)),
so the predicted class never changes, only the confidence. T minimises the validation log-loss plus a
weak prior on log T (a bounded 1-D search); the model keeps it only when it lowers the log-loss by more
than ``MIN_GAIN`` both on the validation split and out of sample (temperatures cross-fitted on two halves
of it, each scoring the other), otherwise T = 1 is recorded with ``applied: false``. A small validation
split with almost no errors would otherwise push T to its bound and make a refitted head overconfident. The record (before/after log-loss
and expected calibration error, and the reliability bins of both) goes into the model's validation
metrics under ``calibration``; :class:`~headstart.engine.train.model.Model` applies it to every
``predict_proba``. The temperature is fitted on the head trained on the training split and applied to
the head refitted on all rows (same model family, same data scale), the usual compromise when no
rows are left for a second validation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-12
MIN_GAIN = 1e-3  # relative log-loss improvement needed to apply the temperature (in and out of sample)
MIN_ITEMS = 20  # validation items needed to fit one
T_MIN, T_MAX = 0.25, 4.0
PRIOR = 10.0  # weight of (log T)^2 in validation items: a weak pull towards T = 1
BINS = 10


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(proba) / T), row by row (T = 1 returns the input)."""
    if temperature == 1.0:
        return proba
    z = np.log(np.clip(np.asarray(proba, np.float64), EPS, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return (z / z.sum(axis=1, keepdims=True)).astype(np.asarray(proba).dtype, copy=False)


def log_loss(proba: np.ndarray, y_idx: np.ndarray) -> float:
    """Mean negative log-probability of the true class (rows whose class the head lacks: y_idx < 0, skipped)."""
    known = y_idx >= 0
    p = np.asarray(proba, np.float64)[known]
    return float(-np.log(np.clip(p[np.arange(len(p)), y_idx[known]], EPS, None)).mean()) if len(p) else float("nan")


def reliability(proba: np.ndarray, y_idx: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Confidence (max probability) in ``bins`` equal-width bins: per bin the mean confidence, accuracy and
    count, and the expected calibration error (count-weighted mean |accuracy - confidence|)."""
    p = np.asarray(proba, np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y_idx).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, confidence, minlength=bins)
    acc_sum = np.bincount(which, correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf, acc = conf_sum / count, acc_sum / count
    ece = float(np.abs(acc_sum - conf_sum).sum() / max(len(p), 1))
    return {"ece": ece, "bins": [{"confidence": None if c == 0 else float(conf[i]),
                                  "accuracy": None if c == 0 else float(acc[i]), "count": int(c)}
                                 for i, c in enumerate(count)]}


def fit_temperature(proba: np.ndarray, y_idx: np.ndarray) -> float:
    """The T in [T_MIN, T_MAX] minimising the log-loss of softmax(log(proba) / T) plus a weak prior on log T
    (``PRIOR`` pseudo-items' worth of (log T)², so a small validation set with few errors cannot drive T to a
    bound), by golden-section search on log T."""
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    ratio = (np.sqrt(5) - 1) / 2
    weight = PRIOR / max(len(y_idx), 1)

    def loss(log_t: float) -> float:
        return log_loss(apply_temperature(proba, float(np.exp(log_t))), y_idx) + weight * log_t * log_t

    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(40):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2))


def _held_out_loss(proba: np.ndarray, y_idx: np.ndarray, seed: int = 0) -> float:
    """Log-loss with temperatures cross-fitted on two random halves (each half scored with the other's T):
    an estimate of the calibrated log-loss on items the temperature was not fitted on."""
    order = np.random.default_rng(seed).permutation(len(y_idx))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    total = 0.0
    for fit_on, score_on in (halves, halves[::-1]):
        t = fit_temperature(proba[fit_on], y_idx[fit_on])
        total += log_loss(apply_temperature(proba[score_on], t), y_idx[score_on]) * len(score_on)
    return total / len(y_idx)


def calibrate(proba: np.ndarray, y_true: np.ndarray, classes: Any) -> dict[str, Any]:
    """Fit a temperature on validation probabilities and say whether it helps (see the module docstring)."""
    index = {str(c): i for i, c in enumerate(classes)}
    y_idx = np.asarray([index.get(str(v), -1) for v in y_true], np.int64)
    known = y_idx >= 0
    proba, y_idx = np.asarray(proba)[known], y_idx[known]
    before_loss = log_loss(proba, y_idx)
    temperature = fit_temperature(proba, y_idx) if len(y_idx) else 1.0
    after = apply_temperature(proba, temperature)
    after_loss = log_loss(after, y_idx)
    held_out = _held_out_loss(proba, y_idx) if len(y_idx) >= MIN_ITEMS else float("nan")
    applied = bool(len(y_idx) >= MIN_ITEMS and after_loss < before_loss * (1 - MIN_GAIN)
                   and held_out < before_loss * (1 - MIN_GAIN))
    before_rel, after_rel = reliability(proba, y_idx), reliability(after, y_idx)
    return {"method": "temperature", "temperature": round(temperature, 6) if applied else 1.0,
            "fitted_temperature": round(temperature, 6), "applied": applied, "n": int(len(y_idx)),
            "held_out_log_loss": None if np.isnan(held_out) else round(held_out, 6),
            "before": {"log_loss": round(before_loss, 6), "ece": round(before_rel["ece"], 6),
                       "bins": before_rel["bins"]},
            "after": {"log_loss": round(after_loss if applied else before_loss, 6),
                      "ece": round((after_rel if applied else before_rel)["ece"], 6),
                      "bins": (after_rel if applied else before_rel)["bins"]}}


def temperature_of(manifest: dict[str, Any]) -> float:
    """The temperature a model applies (1.0 when it has no calibration or it did not help)."""
    record = (manifest.get("metrics") or {}).get("calibration") or {}
    t = record.get("temperature", 1.0) if record.get("applied") else 1.0
    return float(t) if isinstance(t, (int, float)) and t > 0 else 1.0


def format_calibration(record: dict[str, Any]) -> str:
    """One line: temperature and before/after log-loss and ECE."""
    b, a = record["before"], record["after"]
    if not record["applied"]:
        return (f"calibration: temperature {record['fitted_temperature']:.3g} would not help the validation "
                f"log-loss ({b['log_loss']:.4f}); probabilities left as the head gives them (ECE {b['ece']:.4f})")
    return (f"calibration: temperature {record['temperature']:.3g} on validation: log-loss {b['log_loss']:.4f} -> "
            f"{a['log_loss']:.4f}, ECE {b['ece']:.4f} -> {a['ece']:.4f}")
