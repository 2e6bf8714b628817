"""int8 judged by the head: the same head fitted on int8 and on fp32 features, compared on validation.

The export's parity gate checks that int8 embeddings point where fp32 ones do (cosine); a class that
lives in a small direction of the embedding can still be lost. So ``train``/``sweep --precision int8``
also embed the source at fp32 (through the feature store: once), fit the head on a sample of each
precision's training split (≤ ``SAMPLE`` rows, same seed) and score both on validation. When int8 loses
more than ``MAX_LOSS_PT`` accuracy points the model is trained on the fp32 features instead (and its
manifest says so); the record goes into the manifest's training summary under ``int8_check``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE = 5_000  # training rows (and at most as many validation rows) each side is fitted and scored on
MAX_LOSS_PT = 0.5  # accuracy points int8 may lose before the model falls back to fp32


def _accuracy(ref: Any, prep: Any, engine: Any) -> tuple[float, int, int]:
    from ..heads.resolve import build_head

    rng = np.random.default_rng(prep.seed)
    train, val = prep.split.train, prep.split.val
    if len(train) > SAMPLE:
        train = np.sort(rng.choice(train, SAMPLE, replace=False))
    if len(val) > SAMPLE:
        val = np.sort(rng.choice(val, SAMPLE, replace=False))
    head, _ = build_head(ref, engine)
    head.fit(np.asarray(prep.X.take(train)), prep.y[train])
    predicted = np.asarray(head.predict(np.asarray(prep.X.take(val))))
    return float(np.mean(predicted.astype(str) == prep.y[val].astype(str))), len(train), len(val)


def judge_int8(ref: Any, prep: Any, fp_prep: Any, engine: Any) -> dict[str, Any]:
    """Compare head ``ref`` on int8 (``prep``) and fp32 (``fp_prep``) features of the same source."""
    int8_acc, n_train, n_val = _accuracy(ref, prep, engine)
    fp32_acc, _, _ = _accuracy(ref, fp_prep, engine)
    delta = round(100 * (int8_acc - fp32_acc), 2)
    fallback = delta < -MAX_LOSS_PT
    return ({"head": str(ref), "int8_accuracy": round(int8_acc, 5), "fp32_accuracy": round(fp32_acc, 5),
             "delta_pt": delta, "max_loss_pt": MAX_LOSS_PT, "fallback": fallback,
             "used": "fp32" if fallback else "int8", "n_train": n_train, "n_val": n_val})


def format_int8_check(record: dict[str, Any]) -> str:
    """One line for stderr: the delta, and the fallback when there was one."""
    figures = (f"{record['head']} on a validation sample: int8 {record['int8_accuracy']:.4f} vs fp32 "
               f"{record['fp32_accuracy']:.4f} ({record['delta_pt']:+.2f} pt)")
    if record["fallback"]:
        return (f"warning: int8 features lose {-record['delta_pt']:.2f} accuracy points ({figures}), more than "
                f"{record['max_loss_pt']} pt: the model was trained on fp32 features instead")
    return f"note: int8 judged by the head: {figures}; int8 kept"
