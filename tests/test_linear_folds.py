"""The linear head's k-fold L2 path, solved for all folds at once (``_lbfgs_folds`` / ``_minimise_folds``), against
a straightforward per-fold solve with the single-problem ``_lbfgs`` / ``_minimise`` (the path before batching),
on both solver backends (numpy arrays, torch tensors on the CPU; tests/test_linear_backends.py compares the two).

Float32 L-BFGS amplifies rounding where the folds' problems are ill-conditioned (more features than rows, weak
L2): there the per-fold reference itself moves by ~1% when only its row chunking (summation order) changes, so the
exact comparisons run in float64, or in float32 on data where the reference is stable."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from headstart.plugins.heads.linear import (_NUMPY, L2_PATH, PATH_ITERS, PATIENCE, LinearHead, _choose_l2, _FoldRows,
                                            _Geometry, _lbfgs, _lbfgs_folds, _minimise, _minimise_folds, _ops,
                                            _Rows, _stratified_folds, _torch_ops)
from headstart.sdk import ArrayMatrix, class_weights


@pytest.fixture(params=["numpy", "torch"])
def xp(request) -> Any:
    """A solver backend: numpy arrays, or torch tensors on the CPU."""
    return _NUMPY if request.param == "numpy" else _torch_ops("cpu")


def _np(a: Any) -> np.ndarray:
    """A backend array as a numpy array."""
    return _NUMPY.asarray(a)


def _data(name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Features, labels and head options of a few small problems (well-conditioned unless noted)."""
    if name == "three_classes":
        rng = np.random.default_rng(2)
        y = rng.integers(0, 3, 1000)
        X = rng.normal(size=(1000, 50)).astype(np.float32)
        X[:, :3] += np.eye(3)[y]
        return X, y, {}
    if name == "imbalanced_balanced":
        rng = np.random.default_rng(3)
        y = np.array([0] * 200 + [1] * 80 + [2] * 20)
        X = rng.normal(size=(300, 64)).astype(np.float32)
        X[:, :3] += 0.8 * np.eye(3)[y]
        return X, y, {"class_weight": "balanced"}
    if name == "class_missing_from_validation":  # 3 rows of class 0: two folds validate without it; class 3 trains only
        rng = np.random.default_rng(4)
        y = np.array([0] * 3 + [1] * 8 + [2] * 10 + [3])
        X = rng.normal(size=(22, 4)).astype(np.float32)
        X += 2 * np.eye(4)[y]
        return X, y, {}
    if name == "empty_validation_folds":  # 2 rows per class, 5 folds: three folds have no validation rows
        rng = np.random.default_rng(5)
        y = np.repeat(np.arange(3), 2)
        return rng.normal(size=(6, 3)).astype(np.float32), y, {}
    if name in ("ten_folds", "two_folds"):
        rng = np.random.default_rng(6)
        y = rng.integers(0, 4, 200)
        X = rng.normal(size=(200, 20)).astype(np.float32)
        X[:, :4] += 2 * np.eye(4)[y]
        return X, y, {"val_fraction": 0.1 if name == "ten_folds" else 0.5}
    if name == "few_shot":  # 16 rows x 384 features: ill-conditioned at weak L2
        rng = np.random.default_rng(0)
        X = rng.normal(size=(16, 384)).astype(np.float32)
        y = np.array([0, 1] * 8)
        X[y == 0] += 0.3
        return X, y, {}
    raise KeyError(name)


def _setup(X: np.ndarray, y: np.ndarray, options: dict[str, Any], xp: Any) -> tuple[Any, ...]:
    """What LinearHead._fit hands to _choose_l2 (same RNG draws): labels, class weights, geometry, folds."""
    classes, y_idx = np.unique(y, return_inverse=True)
    cw = class_weights(options.get("class_weight"), y_idx, classes)
    rng = np.random.default_rng(0)
    matrix = ArrayMatrix(X)
    geometry = _Geometry(xp.asarray(matrix.take(matrix.sample(len(X), rng))), len(classes))
    folds = _stratified_folds(y_idx, options.get("val_fraction", 0.2), rng)
    assert folds is not None
    return y_idx, cw, geometry, folds


def _reference_choose_l2(X: np.ndarray, y_idx: np.ndarray, folds: tuple[np.ndarray, int], cw: np.ndarray,
                         geometry: _Geometry, tol: float = 1e-5) -> tuple[float, Any, Any, list[dict[str, float]]]:
    """``_choose_l2`` as it was before the batched path: each fold solved in turn by ``_lbfgs``."""
    xp = _ops(geometry.vecs)
    fold, k = folds
    members = np.flatnonzero(fold >= 0)
    Xs, ys, fs = X[members], y_idx[members], fold[members]
    parts = []
    for f in range(k):
        tr, va = np.flatnonzero(fs != f), np.flatnonzero(fs == f)
        if len(va):
            parts.append((_Rows(ArrayMatrix(Xs[tr], chunk_rows=len(tr)), ys[tr], cw, xp), Xs[va], ys[va], len(tr)))
    state = [(xp.zeros((X.shape[1], len(cw))), xp.zeros((len(cw),))) for _ in parts]
    path, averaged, best, stale = [], [], None, 0
    for relative in L2_PATH:
        strength = relative * geometry.scale
        losses, accs = [], []
        for i, (rows, Xva, yva, _) in enumerate(parts):
            state[i] = _lbfgs(rows, strength, *state[i], geometry, PATH_ITERS, tol)
            W, b = (_np(a).astype(np.float64) for a in state[i])
            z = Xva @ W + (b - _np(geometry.mu) @ W)
            top = z.max(1, keepdims=True)
            losses.append(float(np.mean(np.log(np.exp(z - top).sum(1)) + top[:, 0] - z[np.arange(len(z)), yva])))
            accs.append(float(np.mean(z.argmax(1) == yva)))
        mean = float(np.mean(losses))
        se = float(np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else 0.0
        path.append({"l2": strength, "val_loss": mean, "val_loss_se": se, "val_accuracy": float(np.mean(accs))})
        averaged.append((sum(s[0] for s in state) / len(state), sum(s[1] for s in state) / len(state)))
        if best is None or mean < best:
            best, stale = mean, 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    i_best = min(range(len(path)), key=lambda i: path[i]["val_loss"])
    chosen = next(i for i in range(len(path)) if path[i]["val_loss"] <= path[i_best]["val_loss"] + path[i_best]["val_loss_se"])
    path[chosen]["chosen"] = 1.0
    W, b = averaged[chosen]
    return path[chosen]["l2"] * float(np.mean([p[3] for p in parts])) / len(y_idx), W, b, path


@pytest.mark.parametrize("name", ["three_classes", "imbalanced_balanced", "class_missing_from_validation",
                                  "empty_validation_folds", "ten_folds", "two_folds"])
def test_batched_path_matches_the_per_fold_solve(name: str, xp: Any) -> None:
    X, y, options = _data(name)
    y_idx, cw, geometry, folds = _setup(X, y, options, xp)
    l2, W, b, path = _choose_l2(ArrayMatrix(X), y_idx, folds, cw, geometry, 1e-5)
    l2_ref, W_ref, b_ref, path_ref = _reference_choose_l2(X, y_idx, folds, cw, geometry)
    assert [p.get("chosen") for p in path] == [p.get("chosen") for p in path_ref]  # same steps, same choice
    assert l2 == l2_ref
    np.testing.assert_allclose([p["val_loss"] for p in path], [p["val_loss"] for p in path_ref], rtol=1e-4)
    np.testing.assert_allclose([p["val_accuracy"] for p in path], [p["val_accuracy"] for p in path_ref],
                               rtol=0, atol=1.01 / len(y))  # at most one near-tie row predicted the other way
    np.testing.assert_allclose([p["val_loss_se"] for p in path], [p["val_loss_se"] for p in path_ref],
                               rtol=1e-2, atol=1e-5)  # a difference of nearby losses
    W, W_ref, b, b_ref = (_np(a) for a in (W, W_ref, b, b_ref))
    scale = float(np.abs(W_ref).max())
    np.testing.assert_allclose(W, W_ref, atol=1e-3 * scale)
    np.testing.assert_allclose(b, b_ref, atol=1e-3 * max(scale, float(np.abs(b_ref).max())))


def test_few_shot_path_matches_where_the_folds_are_well_conditioned(xp: Any) -> None:
    """16 rows x 384 features: the strong-L2 steps agree tightly; at weak L2 the 13-row folds' L-BFGS runs at
    float32 noise (the reference itself moves by ~1% with its row chunking), so only closeness is checked."""
    X, y, options = _data("few_shot")
    y_idx, cw, geometry, folds = _setup(X, y, options, xp)
    path = _choose_l2(ArrayMatrix(X), y_idx, folds, cw, geometry, 1e-5)[3]
    path_ref = _reference_choose_l2(X, y_idx, folds, cw, geometry)[3]
    losses, losses_ref = [p["val_loss"] for p in path], [p["val_loss"] for p in path_ref]
    assert len(losses) == len(losses_ref)
    np.testing.assert_allclose(losses[:3], losses_ref[:3], rtol=1e-4)
    np.testing.assert_allclose(losses, losses_ref, rtol=5e-2)


def _float64_setup(name: str, xp: Any) -> tuple[Any, ...]:
    """The folds of ``name`` in float64, an orthonormal float64 eigenbasis (W = U A is then the same change of
    variables for _lbfgs and _lbfgs_folds) and one float64 row block per fold for _lbfgs."""
    X, y, options = _data(name)
    y_idx, cw, geometry, (fold, k) = _setup(X, y, options, xp)
    X64 = xp.asarray(X.astype(np.float64))
    geometry.mu, geometry.eig = X64.mean(0), xp.float64(geometry.eig)
    geometry.vecs = xp.asarray(np.linalg.qr(_np(geometry.vecs).astype(np.float64))[0])
    scored = [f for f in range(k) if (fold == f).any()]
    weights = np.zeros((len(y_idx), len(scored)))
    for i, f in enumerate(scored):
        train = (fold != f) & (fold >= 0)
        weights[train, i] = cw[y_idx[train]] / cw[y_idx[train]].sum()
    blocks = [[(xp.asarray(X.astype(np.float64)[weights[:, i] > 0]), xp.asarray(y_idx[weights[:, i] > 0]),
                xp.asarray(weights[weights[:, i] > 0, i][:, None]))] for i in range(len(scored))]
    rows = _FoldRows(X64, xp.asarray(y_idx), xp.asarray(weights), geometry)
    return rows, blocks, geometry, X.shape[1], len(cw)


@pytest.mark.parametrize("name", ["three_classes", "imbalanced_balanced", "ten_folds", "two_folds"])
def test_batched_lbfgs_takes_each_folds_own_iterates_in_float64(name: str, xp: Any) -> None:
    """Along the whole warm-started path, each fold's weights equal its own _lbfgs solve to float64 rounding: the
    same steps, backtracking, history and stopping tests (folds stop after different numbers of iterations)."""
    rows, blocks, geometry, dim, n_classes = _float64_setup(name, xp)
    state = [(xp.asarray(np.zeros((dim, n_classes))), xp.asarray(np.zeros(n_classes))) for _ in blocks]
    AbT = xp.asarray(np.zeros((len(blocks), n_classes, dim + 1)))
    for relative in L2_PATH:
        strength = relative * geometry.scale
        state = [_lbfgs(block, strength, *state[i], geometry, PATH_ITERS, 1e-5) for i, block in enumerate(blocks)]
        AbT = _lbfgs_folds(rows, strength, AbT, geometry, PATH_ITERS, 1e-5)
        for i, (W, b) in enumerate(state):
            W, b = _np(W), _np(b)
            np.testing.assert_allclose(_np(geometry.vecs @ AbT[i, :, :-1].T), W,
                                       rtol=0, atol=1e-8 * float(np.abs(W).max()))
            np.testing.assert_allclose(_np(AbT[i, :, -1]), b, rtol=0, atol=1e-8 * max(1.0, float(np.abs(b).max())))


def test_minimise_folds_runs_each_problem_as_minimise_does(xp: Any) -> None:
    """Problems that stop in different ways, side by side: converged at the start (gradient below tol), a failed
    line search (a loss that cannot decrease), a loss that stops decreasing (relative 1e-9), a linear loss whose
    pairs are never kept (s·y = 0, while the others keep theirs) and quadratics needing all the iterations."""
    rng = np.random.default_rng(0)
    n = 6

    def quadratic(condition: float, offset: float = 0.0):
        Q = np.linalg.qr(rng.normal(size=(n, n)))[0]
        A = xp.asarray(Q @ np.diag(np.geomspace(1, condition, n)) @ Q.T)
        c = xp.asarray(rng.normal(size=n))
        return lambda x: (offset + float(0.5 * x @ A @ x - c @ x), A @ x - c)

    problems = [
        quadratic(1e3), quadratic(30.0),
        lambda x: (float(0.5 * x @ x), x),  # starts at 0: converged
        lambda x: (1.0, xp.ones_like(x)),  # no step decreases it
        quadratic(10.0, offset=1e12),  # decreases by less than 1e-9 relative
        lambda x: (float(x.sum()), xp.ones_like(x)),  # linear: y = 0, no pair kept
    ]
    starts = rng.normal(size=(len(problems), n))
    starts[2] = 0
    expected = np.stack([_np(_minimise(fg, xp.asarray(starts[i].copy()), 25, 1e-10)) for i, fg in enumerate(problems)])

    def batched(x: Any, which: Any = None) -> tuple[Any, Any]:
        which = range(len(x)) if which is None else which.tolist()
        values = [problems[i](row) for i, row in zip(which, x)]
        return (xp.asarray(np.array([[v[0]] for v in values])),
                xp.concatenate([v[1].reshape(1, -1) for v in values]))

    got = _np(_minimise_folds(batched, xp.asarray(starts.copy()), 25, 1e-10))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert (got[2] == starts[2]).all() and (got[3] == starts[3]).all()  # stopped problems stay put


def test_fit_chooses_as_the_per_fold_solve() -> None:
    """End to end: LinearHead's chosen strength and path are those of the per-fold reference."""
    X, y, options = _data("three_classes")
    head = LinearHead(**options).fit(X, y)
    y_idx, cw, geometry, folds = _setup(X, y, options, _NUMPY)
    l2_ref, _, _, path_ref = _reference_choose_l2(X, y_idx, folds, cw, geometry)
    assert head.l2_ == l2_ref
    np.testing.assert_allclose([p["val_loss"] for p in head.l2_path_], [p["val_loss"] for p in path_ref], rtol=1e-4)
