"""Learning curves: validation accuracy of heads at several training sizes, a fitted trend, one line of advice.

Each head is fitted on stratified subsamples of the training split at ``FRACTIONS`` of its size
(``REPEATS`` draws each, one at the full size) and scored on the whole validation split. The trend is an
inverse power law of the error, ``err(n) = floor + b · n^-c`` (the usual shape of learning curves), fitted
to the mean errors; it gives the accuracy expected with twice the labels. The advice, from the best head:

* ``more_labels``: the trend expects ≥ ``GAIN_PT`` accuracy points more at 2× the labels;
* ``enough``: it has plateaued at or above the target (``ENOUGH`` accuracy without one);
* ``plateau``: it has plateaued below that: fine-tune the backbone (``headstart finetune``) or try another.

``headstart sweep --curve`` prints it; the fine-tune escalation (``train --target``) records the same
evidence before it fine-tunes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
REPEATS = 3
GAIN_PT = 1.0  # expected accuracy points at 2× data that make "more labels will help"
ENOUGH = 0.95  # plateaued accuracy that is "enough" when no target is given


def _subsample(train: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """About ``fraction`` of ``train`` per class (at least one row of each class)."""
    if fraction >= 1.0:
        return train
    picked = []
    for c in np.unique(y[train]):
        rows = train[y[train] == c]
        picked.append(rng.choice(rows, max(1, int(round(len(rows) * fraction))), replace=False))
    return np.sort(np.concatenate(picked))


def fit_trend(sizes: Sequence[float], accuracy: Sequence[float]) -> dict[str, Any]:
    """Fit err(n) = floor + b·n^-c to (size, mean accuracy); returns floor, b, c and a predict function's
    figures at the largest size and twice it. Falls back to the last segment's slope per doubling when the
    fit fails (too few distinct sizes)."""
    n = np.asarray(sizes, np.float64)
    err = 1.0 - np.asarray(accuracy, np.float64)
    last = float(n[-1])
    try:
        import warnings

        from scipy.optimize import curve_fit

        def model(x: np.ndarray, floor: float, b: float, c: float) -> np.ndarray:
            return floor + b * x ** (-c)

        c0 = 0.5
        b0 = max(float(err[0] - err[-1]), 1e-3) / max(n[0] ** -c0 - n[-1] ** -c0, 1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (floor, b, c), _ = curve_fit(model, n, err, p0=(max(float(err.min()) * 0.5, 0.0), b0, c0),
                                         bounds=([0.0, 0.0, 0.05], [1.0, np.inf, 2.0]), maxfev=5000)
        at, twice = float(model(last, floor, b, c)), float(model(2 * last, floor, b, c))
        return {"kind": "power law", "floor_error": round(float(floor), 5), "b": float(b), "c": round(float(c), 4),
                "accuracy_at_n": round(1 - at, 5), "accuracy_at_2n": round(1 - twice, 5),
                "gain_2x_pt": round(100 * (at - twice), 2)}
    except Exception:  # noqa: BLE001 - a degenerate curve: use the last segment's slope
        slope = (err[-2] - err[-1]) / max(np.log2(n[-1] / n[-2]), 1e-9) if len(n) > 1 else 0.0
        gain = max(float(slope), 0.0)
        return {"kind": "last segment", "accuracy_at_n": round(1 - float(err[-1]), 5),
                "accuracy_at_2n": round(1 - float(err[-1]) + gain, 5), "gain_2x_pt": round(100 * gain, 2)}


#: At most this many labelled items per class, fine-tuning uses the contrastive objective (few-shot; the
#: crossover with cross-entropy measured in docs/finetune.md); the escalation and the advice both follow it.
CONTRASTIVE_MAX_PER_CLASS = 32


def advise(trend: dict[str, Any], accuracy: float, target: float | None = None, metric: str = "accuracy",
           per_class: float | None = None) -> dict[str, str]:
    """One line of advice from a head's trend and its accuracy with all the labels (``per_class``: labelled
    training items per class, which picks the fine-tune objective the advice names)."""
    gain = trend["gain_2x_pt"]
    if gain >= GAIN_PT:
        return {"kind": "more_labels", "text": f"more labels will help (+{gain:.1f} pt {metric} expected at 2x data)"}
    goal = ENOUGH if target is None else target
    if accuracy >= goal:
        return {"kind": "enough", "text": f"frozen features are enough ({metric} {accuracy:.3f} has plateaued "
                                          f"at or above {goal:g}; +{gain:.1f} pt expected at 2x data)"}
    few = per_class is not None and per_class <= CONTRASTIVE_MAX_PER_CLASS
    command = "headstart finetune --objective contrastive" if few else "headstart finetune"
    return {"kind": "plateau", "text": f"plateaued at {metric} {accuracy:.3f} (+{gain:.1f} pt expected at 2x data, "
                                       f"below {goal:g}): try fine-tuning (`{command}`"
                                       f"{', few labels per class' if few else ''}) or another backbone"}


def learning_curve(X: Any, y: np.ndarray, train: np.ndarray, val: np.ndarray, refs: Sequence[Any], engine: Any,
                   *, seed: int = 0, fractions: Sequence[float] = FRACTIONS, repeats: int = REPEATS,
                   target: float | None = None) -> dict[str, Any]:
    """Validation accuracy of each head in ``refs`` at ``fractions`` of the training rows; trend and advice.

    ``X``: a feature matrix (rows are read with ``take``), ``y``: labels, ``train``/``val``: row indices.
    A head that fails gets an ``error`` and no trend. Returns ``{"sizes", "n_val", "heads": {ref: {"mean",
    "std", "trend", "advice"}}, "best", "advice"}`` (the advice of the head most accurate at full size)."""
    from ..heads.resolve import build_head

    y = np.asarray(y)
    y_val = y[val].astype(str)
    X_val = np.asarray(X.take(val))
    draws = {f: [_subsample(train, y, f, np.random.default_rng(seed + r)) for r in range(repeats if f < 1 else 1)]
             for f in fractions}
    sizes = [int(np.mean([len(d) for d in draws[f]])) for f in fractions]
    heads: dict[str, Any] = {}
    for ref in refs:
        scores: list[list[float]] = []
        try:
            for f in fractions:
                row = []
                for rows in draws[f]:
                    head, _ = build_head(ref, engine)
                    head.fit(np.asarray(X.take(rows)), y[rows])
                    row.append(float(np.mean(np.asarray(head.predict(X_val)).astype(str) == y_val)))
                scores.append(row)
        except Exception as exc:  # noqa: BLE001 - one failing head must not end the curve
            heads[str(ref)] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        mean = [float(np.mean(s)) for s in scores]
        trend = fit_trend(sizes, mean)
        heads[str(ref)] = {"mean": [round(m, 5) for m in mean], "std": [round(float(np.std(s)), 5) for s in scores],
                           "trend": trend,
                           "advice": advise(trend, mean[-1], target, per_class=len(train) / max(len(np.unique(y[train])), 1))}
    scored = {k: v for k, v in heads.items() if "error" not in v}
    best = max(scored, key=lambda k: scored[k]["mean"][-1]) if scored else None
    return {"sizes": sizes, "fractions": list(fractions), "repeats": repeats, "n_val": int(len(val)),
            "heads": heads, "best": best, "advice": scored[best]["advice"] if best else None}


def format_curve(curve: dict[str, Any]) -> str:
    """A table (head × training size: mean validation accuracy) and the advice line."""
    sizes = curve["sizes"]
    lines = ["learning curve (validation accuracy by training size, mean of repeats):",
             "  ".join(["head".ljust(28), *[f"{s:>7}" for s in sizes], "  at 2x"])]
    for ref, h in curve["heads"].items():
        if "error" in h:
            lines.append(f"{ref[:28].ljust(28)}  failed: {h['error']}")
            continue
        lines.append("  ".join([ref[:28].ljust(28), *[f"{m:7.4f}" for m in h["mean"]],
                                f"{h['trend']['accuracy_at_2n']:7.4f}"]))
    if curve.get("advice"):
        lines.append(f"advice ({curve['best']}): {curve['advice']['text']}")
    return "\n".join(lines)
