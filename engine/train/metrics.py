"""Classification metrics in numpy, matching scikit-learn's defaults.

``macro_f1`` averages over the union of true and predicted labels (as
``sklearn.metrics.f1_score(average="macro")`` does). Labels the model never saw are
counted in ``n_unseen_labels``; they are always wrong and stay in every figure.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any],
                           classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """accuracy, macro_f1, n, per-class precision/recall/f1/support, confusion (rows true, cols predicted).

    ``classes`` are the model's classes; true labels outside them are reported as unseen.
    """
    t = np.asarray([str(v) for v in y_true], dtype=object)
    p = np.asarray([str(v) for v in y_pred], dtype=object)
    known = [str(c) for c in classes] if classes is not None else sorted(set(t.tolist()))
    unseen = sorted(set(t.tolist()) - set(known))
    labels = sorted(set(known) | set(t.tolist()) | set(p.tolist()))
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    if len(t):
        np.add.at(confusion, ([index[v] for v in t], [index[v] for v in p]), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = (support > 0) | (predicted > 0)
    return {
        "accuracy": float(tp.sum() / len(t)) if len(t) else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "n": int(len(t)),
        "n_unseen_labels": int(sum(int(support[index[u]]) for u in unseen)),
        "unseen_labels": unseen,
        "classes": labels,
        "confusion": confusion.tolist(),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
    }
