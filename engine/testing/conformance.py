"""Conformance check for head plugins: the scikit-learn contract, fit/predict, safe persistence.

Use it in a plugin's own tests::

    from headstart.engine.testing.conformance import check_head
    check_head(my_plugin_spec)            # a HeadSpec (``arg=`` for heads that take one)
    check_head(lambda: MyHead(k=3))       # or any factory of unfitted estimators

It raises :class:`AssertionError` naming the broken rule, and returns a small report.
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable

import numpy as np

from ..heads.spec import HeadSpec


def _factory(head: HeadSpec | Callable[[], Any], arg: str | None, params: dict[str, Any]) -> Callable[[], Any]:
    if isinstance(head, HeadSpec):
        return lambda: head.build(arg, **params)
    return lambda: head(**params)


def conformance_data(n_per_class: int = 40, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated classes with string labels (unit-norm rows, like embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, dim)) * 3
    X = np.concatenate([c + rng.standard_normal((n_per_class, dim)) for c in centres]).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.repeat(np.array(["ant", "bee", "cat"], dtype=object), n_per_class)
    order = rng.permutation(len(y))
    return X[order], y[order]


def check_head(head: HeadSpec | Callable[..., Any], *, arg: str | None = None, params: dict[str, Any] | None = None,
               min_accuracy: float = 0.9) -> dict[str, Any]:
    """Check one head; returns ``{"estimator", "accuracy", "format"}``."""
    from sklearn.base import clone

    from ..heads.persist import load_head, save_head

    make = _factory(head, arg, dict(params or {}))
    est = make()
    name = type(est).__name__
    for method in ("fit", "predict", "get_params", "set_params"):
        assert callable(getattr(est, method, None)), f"{name} has no {method}()"
    fitted_before = [a for a in vars(est) if a.endswith("_") and not a.startswith("_")]
    assert not fitted_before, f"{name}.__init__ sets fitted attributes {fitted_before}; __init__ must only store params"
    params_now = est.get_params(deep=False)
    assert isinstance(params_now, dict), f"{name}.get_params() must return a dict"
    twin = clone(est)
    assert type(twin) is type(est) and twin.get_params(deep=False).keys() == params_now.keys(), \
        f"sklearn.base.clone({name}) does not reproduce its parameters"
    assert est.set_params(**params_now) is est, f"{name}.set_params() must return self"
    X, y = conformance_data()
    try:
        est.predict(X)
    except Exception:  # noqa: BLE001 - any error is fine; silently predicting is not
        pass
    else:
        raise AssertionError(f"{name}.predict() before fit() must raise")
    assert est.fit(X, y) is est, f"{name}.fit() must return self"
    assert list(np.asarray(est.classes_)) == ["ant", "bee", "cat"], f"{name}.classes_ must be the sorted labels"
    assert est.n_features_in_ == X.shape[1], f"{name}.n_features_in_ must be {X.shape[1]}"
    predicted = np.asarray(est.predict(X))
    assert predicted.shape == (len(X),), f"{name}.predict() returned shape {predicted.shape}, expected ({len(X)},)"
    assert set(predicted.tolist()) <= {"ant", "bee", "cat"}, f"{name}.predict() returned labels outside classes_"
    accuracy = float(np.mean(predicted == y))
    assert accuracy >= min_accuracy, f"{name} reaches only {accuracy:.2f} training accuracy on separable data"
    proba = None
    if hasattr(est, "predict_proba"):
        proba = np.asarray(est.predict_proba(X))
        assert proba.shape == (len(X), 3), f"{name}.predict_proba() returned shape {proba.shape}, expected ({len(X)}, 3)"
        assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-4), \
            f"{name}.predict_proba() rows must be finite and sum to 1"
        assert (np.asarray(est.classes_)[proba.argmax(1)] == predicted).all(), \
            f"{name}.predict() disagrees with argmax of predict_proba()"
    try:
        est.predict(X[:, :-1])
    except Exception:  # noqa: BLE001
        pass
    else:
        raise AssertionError(f"{name}.predict() must refuse features of another dimension")
    with tempfile.TemporaryDirectory() as tmp:
        record = save_head(est, tmp)
        assert record["format"] != "pickle", f"{name} is only persistable as pickle; subclass headstart.engine.heads.base.Head " \
                                             "or use a scikit-learn estimator (skops)"
        loaded = load_head(tmp, record, build=make, trust=False)
    assert (np.asarray(loaded.predict(X)) == predicted).all(), f"{name} predicts differently after save/load"
    if proba is not None:
        assert np.allclose(np.asarray(loaded.predict_proba(X)), proba, atol=1e-5), \
            f"{name} gives other probabilities after save/load"
    return {"estimator": name, "accuracy": accuracy, "format": record["format"]}
