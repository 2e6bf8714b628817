"""The linear head's two solver backends: numpy (device 'cpu', no torch import) and torch (device 'cuda'; run here on
CPU tensors). The solver is written once against ``_NumpyOps`` / ``_TorchOps``; these tests check that both take the
same steps (float64: to rounding; float32: the same chosen strength and weights to float32 noise) and that a CPU fit
never imports torch."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from headstart.plugins.heads import linear
from headstart.plugins.heads.linear import (_NUMPY, L2_PATH, PATH_ITERS, LinearHead, _FoldRows, _Geometry, _lbfgs,
                                            _lbfgs_folds, _NumpyOps, _stratified_folds, _torch_ops, _TorchOps)
from headstart.sdk import ArrayMatrix, class_weights, FeatureMatrix

TORCH = _torch_ops("cpu")


def test_cpu_fit_never_imports_torch() -> None:
    """A default LinearHead (device 'cpu', L2 chosen by the folds), a start_from refit and predictions, in a fresh
    interpreter: torch is never imported."""
    code = """
import sys
import numpy as np
from headstart.plugins.heads.linear import LinearHead
rng = np.random.default_rng(0)
y = np.repeat(np.arange(3), 16)
X = rng.normal(size=(48, 384)).astype(np.float32)
X[:, :3] += np.eye(3)[y]
first = LinearHead().fit(X[:40], y[:40])
assert first.l2_path_, "the folds chose no strength"
refit = LinearHead().start_from(first).fit(X, y)
assert refit.predict(X).shape == (48,) and refit.coef_.dtype == np.float32
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_backends_offer_the_same_operations() -> None:
    def operations(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    assert operations(_NumpyOps) == operations(_TorchOps)


def _problem(name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Well-conditioned problems (features, labels, head options), as in tests/test_linear_folds.py."""
    rng = np.random.default_rng({"three_classes": 2, "balanced": 3}[name])
    if name == "three_classes":
        y = rng.integers(0, 3, 1000)
        X = rng.normal(size=(1000, 50)).astype(np.float32)
        X[:, :3] += np.eye(3)[y]
        return X, y, {}
    if name == "balanced":
        y = np.array([0] * 200 + [1] * 80 + [2] * 20)
        X = rng.normal(size=(300, 64)).astype(np.float32)
        X[:, :3] += 0.8 * np.eye(3)[y]
        return X, y, {"class_weight": "balanced"}
    raise KeyError(name)


@pytest.mark.parametrize("name", ["three_classes", "balanced"])
def test_backends_take_the_same_steps_in_float64(name: str) -> None:
    """The warm-started fold path (``_lbfgs_folds``) and a full-batch fit (``_lbfgs``) on float64 data and the same
    geometry: numpy and torch iterates agree to float64 rounding, every step along the path. (Not on the few-shot
    data: its separable 13-row folds amplify even float64 rounding to ~1% at the weakest strengths.)"""
    X, y, options = _problem(name)
    k = len(np.unique(y))
    cw = class_weights(options.get("class_weight"), y, np.unique(y))
    fold, n_folds = _stratified_folds(y, 0.2, np.random.default_rng(0))
    weights = np.stack([np.where(fold != f, cw[y], 0.0) for f in range(n_folds)], 1)
    weights /= weights.sum(0)
    X64 = X.astype(np.float64)
    geometry = _Geometry(_NUMPY.asarray(X), k)
    geometry.mu, geometry.eig = X64.mean(0), geometry.eig.astype(np.float64)
    geometry.vecs = np.linalg.qr(geometry.vecs.astype(np.float64))[0]
    results = {}
    for xp in (_NUMPY, TORCH):
        geo = geometry.on(xp)
        rows = _FoldRows(xp.asarray(X64), xp.asarray(y), xp.asarray(weights), geo)
        AbT = xp.asarray(np.zeros((n_folds, k, X.shape[1] + 1)))
        path = []
        for relative in L2_PATH:
            AbT = _lbfgs_folds(rows, relative * geo.scale, AbT, geo, PATH_ITERS, 1e-5)
            path.append(_NUMPY.asarray(AbT))
        block = [(xp.asarray(X64), xp.asarray(y), xp.asarray((cw[y] / cw[y].sum())[:, None]))]
        W, b = _lbfgs(block, 1e-2 * geo.scale, xp.asarray(np.zeros((X.shape[1], k))), xp.asarray(np.zeros(k)),
                      geo, 50, 1e-8)
        results[xp] = path, _NUMPY.asarray(W), _NUMPY.asarray(b)
    (path_np, W_np, b_np), (path_torch, W_torch, b_torch) = results[_NUMPY], results[TORCH]
    for step_np, step_torch in zip(path_np, path_torch):
        np.testing.assert_allclose(step_torch, step_np, rtol=0, atol=1e-9 * np.abs(step_np).max())
    np.testing.assert_allclose(W_torch, W_np, rtol=0, atol=1e-9 * np.abs(W_np).max())
    np.testing.assert_allclose(b_torch, b_np, rtol=0, atol=1e-9 * max(1.0, np.abs(b_np).max()))


class _Streamed(FeatureMatrix):
    """An in-memory matrix that is not an ArrayMatrix: the final fit reads its chunks on every pass (out of core)."""

    def __init__(self, array: np.ndarray, chunk_rows: int) -> None:
        self.array, self.dim, self.chunk_rows = array, array.shape[1], chunk_rows

    def __len__(self) -> int:
        return len(self.array)

    def chunks(self):
        return ArrayMatrix(self.array, self.chunk_rows).chunks()

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[rows])

    def subset(self, rows: np.ndarray) -> "FeatureMatrix":
        return _Streamed(self.array[rows], self.chunk_rows)


def _assert_fitted_alike(ours: LinearHead, theirs: LinearHead) -> None:
    """The same chosen strength (the mean feature variance it is relative to differs by float32 rounding), path
    and weights to float32 noise (both stop where the largest gradient entry is near tol, 1e-5: 4e-5 of the weights
    apart at most here)."""
    assert ours.l2_ == pytest.approx(theirs.l2_, rel=1e-6)
    assert [p.get("chosen") for p in ours.l2_path_] == [p.get("chosen") for p in theirs.l2_path_]
    np.testing.assert_allclose([p["val_loss"] for p in ours.l2_path_], [p["val_loss"] for p in theirs.l2_path_],
                               rtol=1e-4)
    scale = np.abs(theirs.coef_).max()
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=0, atol=2e-4 * scale)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=0,
                               atol=2e-4 * max(scale, np.abs(theirs.intercept_).max()))


@pytest.mark.parametrize("case", ["three_classes", "balanced", "fixed_l2", "streamed", "warm_up", "start_from"])
def test_backends_fit_alike(case: str, monkeypatch) -> None:
    """LinearHead end to end, on numpy (device 'cpu') and on torch tensors (what device 'cuda' runs; here on the
    CPU): the same chosen strength and weights to float32 noise, on well-conditioned data. ``start_from`` takes a
    head fitted by the other backend."""
    name = "balanced" if case == "balanced" else "three_classes"
    X, y, options = _problem(name)
    data: Any = X
    if case == "fixed_l2":
        options = {"l2": 1e-3, "max_iter": 25}
    if case in ("streamed", "warm_up"):
        data = _Streamed(X, chunk_rows=300)
    if case == "warm_up":  # above WARM_ROWS rows the final fit starts from an in-memory fit on a sample
        monkeypatch.setattr(linear, "WARM_ROWS", 600)
        monkeypatch.setattr(linear, "COV_ROWS", 400)
    fitted = {}
    for backend in (_NUMPY, TORCH):
        monkeypatch.setattr(linear, "_backend", lambda device, backend=backend: backend)
        if case == "start_from":
            other = TORCH if backend is _NUMPY else _NUMPY
            monkeypatch.setattr(linear, "_backend", lambda device: other)
            first = LinearHead().fit(X[:800], y[:800])
            assert type(first._geometry.vecs).__module__.startswith("torch" if other is TORCH else "numpy")
            monkeypatch.setattr(linear, "_backend", lambda device, backend=backend: backend)
            fitted[backend] = LinearHead().start_from(first).fit(X, y)
        else:
            fitted[backend] = LinearHead(**options).fit(data, y)
    ours, theirs = fitted[_NUMPY], fitted[TORCH]
    _assert_fitted_alike(ours, theirs)
    if case == "start_from":
        assert ours.fit_passes_ <= 1 + linear.REFIT_ITERS * 2  # started at the fitted optimum: a few passes
    assert isinstance(ours._geometry.vecs, np.ndarray)
    assert ours.coef_.dtype == theirs.coef_.dtype == np.float32 and ours.coef_.flags.c_contiguous
    assert ours.intercept_.dtype == np.float32 and isinstance(ours.l2_, float)
