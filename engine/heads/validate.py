"""Checks on features and labels before a head sees them."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import DataError


def _name_rows(rows: np.ndarray, keys: Sequence[str] | None, limit: int = 5) -> str:
    shown = [keys[i] if keys is not None else f"row {i}" for i in rows[:limit].tolist()]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(shown) + more


def check_features(X: Any, keys: Sequence[str] | None = None, *, what: str = "training") -> np.ndarray:
    """``X`` as a C-contiguous float32 (n, d) array; NaN/Inf rows are refused, naming them."""
    arr = np.asarray(X)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{what} features must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(f"{what} features must be a 2-D array (n_items, dim), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"no {what} items", hint="check the source and its error records")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"{len(rows)} {what} item(s) have NaN/Inf features: {_name_rows(rows, keys)}",
                        hint="drop or re-embed these items; NaN features usually mean a broken backbone or input")
    return arr


def unique_inverse(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(y, return_inverse=True)``, in linear time for object arrays (labels as shared strings:
    sorting millions of Python objects took tens of seconds; a dict of the few distinct values does not)."""
    y = np.asarray(y)
    if y.dtype != object or len(y) < 4096:
        classes, inverse = np.unique(y, return_inverse=True)
        return classes, inverse.reshape(-1)
    seen: dict[Any, int] = {}
    codes = np.fromiter((seen.setdefault(v, len(seen)) for v in y), np.int64, len(y))
    values = np.empty(len(seen), dtype=object)
    values[:] = list(seen)
    order = np.argsort(values, kind="stable")  # the order np.unique gives
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return values[order], rank[codes]
