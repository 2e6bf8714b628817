"""Stratified train/validation splits that never fail on small classes.

Documented fallback: a class with a single example goes to the training side only (it
cannot be both learnt and validated); it is listed in ``Split.train_only_classes``.
Every class with two or more examples keeps at least one example on each side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices, sorted
    val: np.ndarray  # row indices, sorted (may be empty)
    train_only_classes: list = field(default_factory=list)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int = 0, *, max_val: int | None = None) -> Split:
    """Split rows of ``y`` per class: about ``val_fraction`` of each class to validation.

    ``max_val`` caps the validation size (classes shrink proportionally).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    if val_fraction == 0.0:
        return Split(np.arange(len(y)), np.empty(0, np.int64))
    fraction = val_fraction if not max_val else min(val_fraction, max_val / max(len(y), 1))
    from ..heads.validate import unique_inverse

    classes, y_idx = unique_inverse(y)
    train, val, single = [], [], []
    order = np.argsort(y_idx, kind="stable")  # each class's rows, ascending: one sort, not a scan per class
    bounds = np.searchsorted(y_idx[order], np.arange(len(classes) + 1))
    for c in range(len(classes)):
        rows = rng.permutation(order[bounds[c]:bounds[c + 1]])
        if len(rows) < 2:
            single.append(classes[c].item() if hasattr(classes[c], "item") else classes[c])
            train.append(rows)
            continue
        n_val = int(np.clip(round(len(rows) * fraction), 1, len(rows) - 1))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(val)) if val else np.empty(0, np.int64), single)
