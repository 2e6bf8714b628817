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


def stratified_folds(y: np.ndarray, n_folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train rows, held-out rows)`` of ``n_folds`` stratified folds: exactly scikit-learn's
    ``StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(X, y)`` (same rule, same random stream;
    tests/test_fewshot_cli.py compares them) without importing scikit-learn. Every class needs ``n_folds`` rows."""
    y = np.asarray(y)
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, by_appearance = np.unique(first, return_inverse=True)  # classes numbered in order of first appearance
    encoded = by_appearance[inverse.reshape(-1)]
    counts = np.bincount(encoded)
    if n_folds < 2 or counts.min() < n_folds:
        raise ConfigError(f"{n_folds} stratified folds need at least {n_folds} rows in every class "
                          f"(the smallest has {counts.min()})", hint="use fewer folds")
    rng = np.random.RandomState(seed)
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::n_folds], minlength=len(counts)) for i in range(n_folds)])
    fold_of = np.empty(len(y), dtype=np.int64)
    for k in range(len(counts)):
        folds = np.arange(n_folds).repeat(allocation[:, k])
        rng.shuffle(folds)
        fold_of[encoded == k] = folds
    rows = np.arange(len(y))
    return [(rows[fold_of != i], rows[fold_of == i]) for i in range(n_folds)]
