"""Classification metrics on :mod:`sklearn.metrics`, and the rare-event figures of binary tasks.

``classification_metrics``: accuracy, macro F1 (over the union of true and predicted labels, as
``f1_score(average="macro")`` does), per-class precision/recall/F1/support and the confusion matrix.
Labels the model never saw are counted in ``n_unseen_labels``; they are always wrong and stay in every figure.

For two classes, accuracy says nothing when 0.5 % of the items are positive; ``binary_metrics`` adds
ROC-AUC, average precision (PR-AUC) and the best recall at a precision or false-positive-rate target, from
the positive class's scores. ``choose_threshold`` picks the decision threshold that meets a
:class:`ThresholdRule` (``precision=0.9``, ``fpr=0.01``, ``recall=0.8``) on validation; a model keeps it and
predicts "positive" when the positive score is at least the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError

RULE_KINDS = ("precision", "fpr", "recall")
#: Operating points reported for every binary task (besides the rule a model was trained with).
DEFAULT_RULES = ("precision=0.9", "fpr=0.01")


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any],
                           classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """accuracy, macro_f1, n, per-class precision/recall/f1/support, confusion (rows true, cols predicted).

    ``classes`` are the model's classes; true labels outside them are reported as unseen.
    """
    t_codes, t_names = _str_codes(y_true)
    p_codes, p_names = _str_codes(y_pred)
    if len(t_codes) != len(p_codes):
        raise DataError(f"{len(t_codes)} true labels and {len(p_codes)} predictions",
                        hint="pass one prediction per labelled item")
    known = [str(c) for c in classes] if classes is not None else sorted(set(t_names))
    unseen = sorted(set(t_names) - set(known))
    labels = sorted(set(known) | set(t_names) | set(p_names))
    index = {label: i for i, label in enumerate(labels)}
    t = np.asarray([index[v] for v in t_names], np.int64)[t_codes]  # label indices: counted as ints, not strings
    del t_codes
    t *= len(labels)
    t += np.asarray([index[v] for v in p_names], np.int64)[p_codes]
    del p_codes
    # the confusion matrix by one bincount (8 bytes an item; sklearn's confusion_matrix and
    # precision_recall_fscore_support made several copies of every label): the same figures
    confusion = np.bincount(t, minlength=len(labels) ** 2).reshape(len(labels), len(labels))
    n = int(len(t))
    del t
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(len(labels)), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(len(labels)), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(len(labels)), where=(support + predicted) > 0)
    present = (support > 0) | (predicted > 0)
    return {
        "accuracy": float(np.trace(confusion) / n) if n else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "n": n,
        "n_unseen_labels": int(sum(int(support[labels.index(u)]) for u in unseen)),
        "unseen_labels": unseen,
        "classes": labels,
        "confusion": confusion.tolist(),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
    }


def _str_codes(values: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """(code per value, the distinct values as sorted strings): labels compared as strings (as ``str(v)``)
    without a string per row."""
    array = values if isinstance(values, np.ndarray) and values.ndim == 1 else np.asarray(list(values), dtype=object)
    if array.dtype == object:  # a dict of the few distinct values (no sort of Python objects)
        seen: dict[Any, int] = {}
        inverse = np.fromiter((seen.setdefault(v, len(seen)) for v in array), np.int64, len(array))
        uniques = list(seen)
    else:
        found, inverse = np.unique(array, return_inverse=True)
        uniques, inverse = found.tolist(), inverse.reshape(-1)
    names = [str(u) for u in uniques]
    distinct = sorted(set(names))
    where = {name: i for i, name in enumerate(distinct)}
    return np.asarray([where[n] for n in names], np.int64)[inverse] if names else inverse, distinct


@dataclass(frozen=True)
class ThresholdRule:
    """An operating-point target: ``precision >= value``, ``fpr <= value`` or ``recall >= value``."""

    kind: str
    value: float

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


def parse_threshold_rule(text: str | ThresholdRule, option: str = "--threshold-for") -> ThresholdRule:
    """``precision=0.9`` -> ThresholdRule("precision", 0.9); a bad value is a :class:`ConfigError`."""
    if isinstance(text, ThresholdRule):
        return text
    hint = f"pass {option} precision=P, fpr=F or recall=R with a number in (0, 1), e.g. precision=0.9 or fpr=0.01"
    kind, sep, raw = str(text).partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in RULE_KINDS:
        raise ConfigError(f"{option} '{text}' is not METRIC=VALUE with METRIC one of {', '.join(RULE_KINDS)}",
                          hint=hint)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{option} '{text}': '{raw.strip()}' is not a number", hint=hint) from None
    if not 0.0 < value < 1.0 or math.isnan(value):
        raise ConfigError(f"{option} '{text}': {kind} must be between 0 and 1 (exclusive)", hint=hint)
    return ThresholdRule(kind, value)


def positive_class(labels: Sequence[Any]) -> str:
    """The positive class of a two-class task: the rarer label (a tie: the last in sorted order, so
    ``1`` over ``0`` and ``true`` over ``false``)."""
    values, counts = np.unique(np.asarray([str(v) for v in labels], dtype=object), return_counts=True)
    if len(values) == 2 and counts[0] != counts[1]:
        return str(values[int(np.argmin(counts))])
    return str(values[-1])


def _curve_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall, fpr) at every distinct score (``sklearn.metrics.roc_curve``), thresholds
    descending; an item is positive when its score is at least the threshold."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y, scores, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # the first point (inf) flags nothing
    tp, fp = tpr * y.sum(), fpr * (len(y) - y.sum())
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    return thresholds, precision, tpr, fpr


def operating_point(y_true: Sequence[Any], scores: np.ndarray, positive: str, rule: ThresholdRule) -> dict[str, Any]:
    """The best threshold that meets ``rule``: most recall at ``precision >= p`` or ``fpr <= f``, most
    precision at ``recall >= r``. ``met`` is False (and ``threshold`` None) when no threshold meets it."""
    y = np.asarray([str(v) == positive for v in y_true], dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds, precision, recall, fpr = _curve_points(y, scores)
    if rule.kind == "precision":
        ok, best = precision >= rule.value, recall
    elif rule.kind == "fpr":
        ok, best = fpr <= rule.value, recall
    else:
        ok, best = recall >= rule.value, precision
    out: dict[str, Any] = {"rule": str(rule), "met": bool(ok.any()), "threshold": None, "precision": None,
                           "recall": 0.0 if rule.kind != "recall" else None, "fpr": None}
    if rule.kind == "fpr" and not ok.any():  # predicting nothing positive always has fpr 0
        out.update(met=True, threshold=_above(scores), precision=None, recall=0.0, fpr=0.0)
        return out
    if ok.any():
        i = int(np.flatnonzero(ok)[np.argmax(best[ok])])
        out.update(threshold=float(thresholds[i]), precision=float(precision[i]), recall=float(recall[i]),
                   fpr=float(fpr[i]))
    return out


def _above(scores: np.ndarray) -> float:
    """A threshold no score reaches (nothing predicted positive)."""
    return float(np.nextafter(scores.max(), np.inf)) if len(scores) else 1.0


def at_threshold(y_true: Sequence[Any], scores: np.ndarray, positive: str, threshold: float) -> dict[str, Any]:
    """precision, recall and fpr of predicting ``positive`` when the score is at least ``threshold``."""
    y = np.asarray([str(v) == positive for v in y_true], dtype=bool)
    hit = np.asarray(scores, dtype=np.float64) >= threshold
    tp, fp = int((hit & y).sum()), int((hit & ~y).sum())
    return {"threshold": float(threshold), "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / int(y.sum()) if y.any() else None, "fpr": fp / int((~y).sum()) if (~y).any() else None,
            "n_flagged": tp + fp}


def binary_metrics(y_true: Sequence[Any], scores: np.ndarray, positive: str,
                   rules: Sequence[str | ThresholdRule] = DEFAULT_RULES) -> dict[str, Any]:
    """ROC-AUC, average precision (PR-AUC), prevalence and, per rule, the best operating point, from
    the positive class's ``scores``. AUCs are None when the items hold only one class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray([str(v) == positive for v in y_true], dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    both = 0 < int(y.sum()) < len(y)
    return {
        "positive": positive, "n_positive": int(y.sum()), "prevalence": float(y.mean()) if len(y) else None,
        "roc_auc": float(roc_auc_score(y, scores)) if both else None,
        "average_precision": float(average_precision_score(y, scores)) if both else None,
        "operating_points": {str(r): operating_point(y_true, scores, positive, parse_threshold_rule(r))
                             for r in dict.fromkeys(str(parse_threshold_rule(r)) for r in rules)} if both else {},
    }


def choose_threshold(y_true: Sequence[Any], scores: np.ndarray, positive: str, negative: str,
                     rule: str | ThresholdRule) -> dict[str, Any]:
    """The decision a model keeps: positive/negative class, threshold and what it achieved on validation.
    A rule no threshold meets is a :class:`DataError` saying the best that was reachable."""
    rule = parse_threshold_rule(rule)
    y = np.asarray([str(v) == positive for v in y_true], dtype=bool)
    if not 0 < int(y.sum()) < len(y):
        raise DataError(f"the validation split has {'no' if not y.any() else 'only'} '{positive}' items, so no "
                        f"threshold can be chosen for {rule}",
                        hint="label more items of both classes or raise --val-fraction")
    point = operating_point(y_true, scores, positive, rule)
    if not point["met"]:
        _, precision, recall, _ = _curve_points(y, np.asarray(scores, dtype=np.float64))
        best = float((precision if rule.kind == "precision" else recall).max())
        raise DataError(f"no decision threshold reaches {rule} on the validation split (best {rule.kind}: "
                        f"{best:.3f} on {len(y)} items)", hint=f"ask for a lower {rule.kind}, or try another head")
    return {"positive": positive, "negative": negative, "rule": str(rule), "threshold": point["threshold"],
            "validation": {k: point[k] for k in ("precision", "recall", "fpr")}, "n_validation": int(len(y))}


def positive_scores(proba: np.ndarray, classes: Sequence[Any], positive: str) -> np.ndarray:
    """The column of ``proba`` (n, len(classes)) for ``positive``."""
    names = [str(c) for c in classes]
    return np.asarray(proba, dtype=np.float64)[:, names.index(positive)]


def rare_event_metrics(y_true: Sequence[Any], proba: np.ndarray | None, classes: Sequence[Any],
                       positive: str | None, decision: dict[str, Any] | None = None,
                       rules: Sequence[str | ThresholdRule] = DEFAULT_RULES) -> dict[str, Any] | None:
    """The ``binary`` block of a two-class model's metrics (None for other models, or without probabilities):
    :func:`binary_metrics` for ``positive`` (the decision's positive class when the model has one), the rule
    the model was trained with among the operating points, and how its threshold does here (``at_threshold``)."""
    if proba is None or len(classes) != 2:
        return None
    positive = decision["positive"] if decision else (positive or positive_class([str(c) for c in classes]))
    if positive not in [str(c) for c in classes]:
        return None
    scores = positive_scores(proba, classes, positive)
    block = binary_metrics(y_true, scores, positive, [*rules, *([decision["rule"]] if decision else [])])
    if decision:
        block["at_threshold"] = {"rule": decision["rule"], **at_threshold(y_true, scores, positive,
                                                                          decision["threshold"])}
    return block
