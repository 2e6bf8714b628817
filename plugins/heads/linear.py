"""``linear``: multinomial logistic regression (full-batch L-BFGS), L2 chosen by k-fold log-loss; numpy on the
CPU, PyTorch on a GPU.

The objective is scikit-learn's: mean (class-weighted) cross-entropy + ``l2``/2·||W||² on the
raw features (``l2`` = 1 / (C · n) in LogisticRegression's terms). Speed comes from
preconditioning: L-BFGS runs on V with W = P V, P from the eigenbasis of the feature covariance
(a sample of it) scaled for the current ``l2``, so the regularised Hessian is close to the
identity and few iterations suffice; P is folded into the weights, never into the data. When
``l2`` is not given, it is chosen by stratified k-fold cross-validation on a subsample (≤ 5,000 rows,
``round(1 / val_fraction)`` folds): a warm-started path of strengths (relative to the mean feature
variance, strong → weak) is fitted on each fold's training part and scored by the mean validation
log-loss; the strongest strength within one standard error of the best mean is kept (the one-SE rule:
a single 80/20 split chose by accuracy before, and its optimum did not survive a shifted test set).
The final fit on all rows starts from the fold-averaged weights at that strength (above 200,000 rows, from a
fit at that strength on a sample of 200,000 rows in memory, which also gives the whitening and the folds, so
that the full-batch fit, one pass over every row per loss evaluation, starts near its optimum and needs few
passes; ``fit_passes_`` counts them). A head told to ``start_from`` a fitted one (``train``'s refit on all
rows after the fit on the training split) starts from its weights, L2 and whitening instead, and runs at
most REFIT_ITERS iterations.
The model is plain ``softmax(X @ coef_.T + intercept_)``.

Out of core: the final fit reads the training rows chunk by chunk (a
:class:`~headstart.engine.heads.features.FeatureMatrix`, e.g. rows of the feature store) and sums the
full-batch loss and gradient over the chunks, so it reaches the same optimum as with every row in
memory while holding one chunk at a time. The whitening sample and the folds' subsample are read
into memory (at most 20,000 and 5,000 rows), and so is the warm-start sample (200,000 rows; from a store,
short contiguous runs of rows: ``FeatureMatrix.sample``).

Backends: the solver is written once, against :class:`_NumpyOps` / :class:`_TorchOps` (the few array operations
whose spelling differs between numpy and torch; ``_ops(array)`` gives an array's). ``device='cpu'`` solves with
numpy and never imports torch (``import torch`` alone takes ~2.5 s, longer than a few-shot fine-tune's head fit);
``'cuda'`` with torch tensors on the GPU. Data and weights are float32; the covariance's eigh, the losses' sums
(per fold and over the rows: a float32 total is too coarse for the line search's tests near the optimum) and the
folds' losses are float64. In float64 both backends take the same steps to rounding, in float32 they agree to its
noise (tests/test_linear_backends.py runs the torch one on CPU tensors).
"""

from __future__ import annotations

import copy
import functools
from contextlib import AbstractContextManager
from typing import Any, Iterator

import numpy as np

from headstart.sdk import ArrayMatrix, class_weights, FeatureMatrix, Head, HeadSpec, hookimpl, resolve_device

L2_PATH = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)  # × mean feature variance
CV_ROWS = 5_000  # rows of the stratified subsample whose folds choose L2
MAX_FOLDS = 10
PATH_ITERS = 10  # L-BFGS iterations per (warm-started) step of the path
FINAL_ROW_BUDGET = 2_000_000  # max_iter=None: final-fit iterations × rows, clipped to 10..100 iterations
PATIENCE = 2  # path steps without a better mean validation log-loss before stopping
COV_ROWS = 20_000  # rows used to estimate the whitening
MIN_VAL_PER_CLASS = 2  # validation rows per fold a class needs for the folds to choose L2 ...
RARE_RATIO = 4  # ... when it is this many times rarer than the largest class
WARM_ROWS = 200_000  # above this many rows, the final fit starts from a fit on a random sample of this many
WARM_ITERS = 100  # L-BFGS iterations of that in-memory fit (cheap: its rows are in memory)
REFIT_ITERS = 4  # max_iter=None, started from a fitted head (``start_from``): at most this many iterations
HALVINGS = (1, 2, 4, 8, 14)  # the folds' line search: steps 2^-1 .. 2^-29, this many per loss evaluation


class LinearHead(Head):
    """Multinomial logistic regression.

    ``l2``: L2 strength on the mean loss (None: chosen by k-fold log-loss, see the module docstring);
    ``val_fraction``: sets the folds (round(1 / val_fraction); 0: no choice, l2 = 0.01 × mean feature variance,
    as when a rare class has too few rows for the folds, see ``_stratified_folds``);
    ``max_iter``: L-BFGS iterations of the final fit (None: 2,000,000 / n_rows, clipped to
    10..100; the final fit starts close to the optimum); ``class_weight``: None, 'balanced' or {label: weight}.
    """

    streams_features = True

    def __init__(self, *, l2: float | None = None, class_weight: Any = None, max_iter: int | None = None,
                 tol: float = 1e-5, val_fraction: float = 0.2, device: str = "cpu", seed: int = 0) -> None:
        self.l2 = l2
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.val_fraction = val_fraction
        self.device = device
        self.seed = seed
        self._start: Any = None

    @classmethod
    def _param_constraints(cls) -> dict[str, list[Any]]:
        from numbers import Integral, Real

        from headstart.sdk import Interval, Options

        return {"l2": [Interval(Real, 0, None, closed="left"), None],
                "class_weight": [None, Options({"balanced"}), dict],
                "max_iter": [Interval(Integral, 1, None, closed="left"), None],
                "tol": [Interval(Real, 0, None, closed="left")],
                "val_fraction": [Interval(Real, 0, 1, closed="left")], "device": [str],
                "seed": [Interval(Integral, 0, None, closed="left")]}

    def start_from(self, fitted: "LinearHead") -> "LinearHead":
        """Make the next ``fit`` start from ``fitted``'s weights, L2 strength (rescaled to the new number of
        rows when it was chosen, not given) and preconditioner, with no choice of strength and no in-memory
        warm-up: a refit on all rows after a fit on the training split (``train``'s refit) then needs a few
        full-batch passes. Ignored when ``fitted`` has other classes or features. Returns ``self``."""
        self._start = fitted
        return self

    def _fit(self, X: FeatureMatrix, y_idx: np.ndarray) -> None:
        xp = _backend(resolve_device(self.device))
        k = len(self.classes_)
        cw = class_weights(self.class_weight, y_idx, self.classes_)
        n = len(X)
        rng = np.random.default_rng(self.seed)
        start = self._start_point(X, xp)
        path: list[dict[str, float]] = []
        if start is not None:
            W, b, l2, geometry, path = start
        elif n > WARM_ROWS:
            W, b, l2, geometry, path = self._warm_up(X, y_idx, cw, rng, xp)
        else:
            sample = X.sample(min(n, COV_ROWS), rng)
            geometry = _Geometry(xp.asarray(X.take(sample)), k)
            W, b = xp.zeros((X.dim, k)), xp.zeros((k,))
            l2 = self.l2
            if l2 is None:
                folds = _stratified_folds(y_idx, self.val_fraction, rng)
                if folds is None:
                    l2 = geometry.scale * 1e-2
                else:
                    l2, W, b, path = _choose_l2(X, y_idx, folds, cw, geometry, self.tol)
        iters = self.max_iter or int(np.clip(FINAL_ROW_BUDGET // n, 10, 100))
        if start is not None and self.max_iter is None:
            iters = min(iters, REFIT_ITERS)  # it starts within the sampling noise of this optimum
        rows = _Rows(X, y_idx, cw, xp)
        W, b = _lbfgs(rows, l2, W, b, geometry, iters, self.tol)
        self.fit_passes_ = rows.passes
        self.n_fit_rows_ = n
        self._geometry = geometry
        self.coef_ = _NUMPY.asarray(W.T)
        self.intercept_ = _NUMPY.asarray(b - geometry.mu @ W)
        self.l2_ = float(l2)
        self.l2_path_ = path

    def _warm_up(self, X: FeatureMatrix, y_idx: np.ndarray, cw: np.ndarray, rng: np.random.Generator,
                 xp: "_Ops") -> tuple[Any, Any, float, "_Geometry", list[dict[str, float]]]:
        """Above WARM_ROWS rows: one sample of WARM_ROWS rows read into memory (short contiguous runs of a
        store's shards, see ``FeatureMatrix.sample``) gives the preconditioner (COV_ROWS of it), the folds
        that choose L2 (CV_ROWS of it) and an in-memory fit at that strength, where the full-batch fit starts
        (weights, bias, L2 for all n rows, geometry, path)."""
        n, k = len(X), len(self.classes_)
        warm = X.sample(WARM_ROWS, rng)
        Xw, yw = X.take(warm), y_idx[warm]
        cov = np.sort(rng.choice(len(warm), min(len(warm), COV_ROWS), replace=False))
        geometry = _Geometry(xp.asarray(Xw[cov]), k)
        W, b = xp.zeros((X.dim, k)), xp.zeros((k,))
        l2, path = self.l2, []
        if l2 is None:
            folds = _stratified_folds(yw, self.val_fraction, rng)
            if folds is None:
                l2 = geometry.scale * 1e-2
            else:
                l2, W, b, path = _choose_l2(ArrayMatrix(Xw), yw, folds, cw, geometry, self.tol)
                l2 *= len(warm) / n  # chosen for the sample's rows; the optimal strength shrinks as 1/n
        W, b = _lbfgs(_Rows(ArrayMatrix(Xw), yw, cw, xp), l2, W, b, geometry, WARM_ITERS, self.tol)
        return W, b, l2, geometry, path

    def _start_point(self, X: FeatureMatrix, xp: "_Ops") -> tuple[Any, Any, float, "_Geometry", list] | None:
        """(W, b, l2, geometry, path) from the head given to :meth:`start_from` (fitted on any device), or None."""
        fitted = getattr(self, "_start", None)
        self._start = None
        geometry = getattr(fitted, "_geometry", None)
        if (fitted is None or geometry is None or not hasattr(fitted, "coef_")
                or fitted.coef_.shape[1] != X.dim or list(fitted.classes_) != list(self.classes_)):
            return None
        geometry = geometry.on(xp)
        W = xp.asarray(np.ascontiguousarray(fitted.coef_.T, dtype=np.float32))
        b = xp.asarray(np.asarray(fitted.intercept_, dtype=np.float32)) + geometry.mu @ W
        l2 = self.l2 if self.l2 is not None else fitted.l2_ * fitted.n_fit_rows_ / len(X)
        return W, b, float(l2), geometry, list(fitted.l2_path_)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        z = X @ self.coef_.T + self.intercept_
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        return z / z.sum(axis=1, keepdims=True)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"coef": self.coef_, "intercept": self.intercept_},
                {"classes": self.classes_.tolist(), "l2": self.l2_, "l2_path": self.l2_path_})

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.coef_ = arrays["coef"].astype(np.float32)
        self.intercept_ = arrays["intercept"].astype(np.float32)
        self.classes_ = np.asarray(meta["classes"])
        self.n_features_in_ = self.coef_.shape[1]
        self.l2_ = meta["l2"]
        self.l2_path_ = meta["l2_path"]


def _stratified_folds(y_idx: np.ndarray, val_fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
    """Fold of each row of a random subsample, stratified per class (-1: not in the subsample; k: training-only),
    or None when
    no strength can be chosen: ``val_fraction`` 0, no class with two examples, or a rare class (at most
    1/RARE_RATIO of the largest) with fewer than MIN_VAL_PER_CLASS rows per fold. With 5 frauds in 100
    accounts the folds' log-loss is noise and chose too strong a penalty (benchmarks/bench_sequences.py,
    PR-AUC at 100 labels 0.532 against 0.737 at the default strength); the default strength is used then.

    ``round(1 / val_fraction)`` folds (0.2 → 5), at least 2, at most MAX_FOLDS; the subsample holds at most
    CV_ROWS rows. A class with a single sampled example is in every fold's training part."""
    if val_fraction <= 0:
        return None
    k = int(np.clip(round(1 / val_fraction), 2, MAX_FOLDS))
    n = len(y_idx)
    fold = np.full(n, -1, np.int64)
    keep = np.ones(n, bool) if n <= CV_ROWS else np.zeros(n, bool)
    if n > CV_ROWS:
        keep[rng.choice(n, CV_ROWS, replace=False)] = True
    counts = np.bincount(y_idx[keep])
    spread = counts[counts >= 2]
    if len(spread) and spread.min() < MIN_VAL_PER_CLASS * k and counts.max() >= RARE_RATIO * spread.min():
        return None  # a rare class with ~1 validation row per fold: its log-loss cannot judge a strength
    any_val = False
    for c in np.unique(y_idx):
        rows = rng.permutation(np.flatnonzero((y_idx == c) & keep))
        if len(rows) < 2:
            fold[rows] = k  # training-only
            continue
        fold[rows] = np.arange(len(rows)) % k
        any_val = True
    return (fold, k) if any_val else None


def _choose_l2(X: FeatureMatrix, y_idx: np.ndarray, folds: tuple[np.ndarray, int], cw: np.ndarray, geometry: "_Geometry",
               tol: float) -> tuple[float, Any, Any, list[dict[str, float]]]:
    """Stratified k-fold path of strengths (strong → weak, warm-started per fold), scored by mean validation
    log-loss; the strongest strength within one standard error of the best mean is chosen (one-SE rule).

    Returns the strength for all n rows (scaled by the folds' training size / n), the fold-averaged weights
    at that strength (the final fit's starting point, on ``geometry``'s backend) and the path (mean/SE of loss
    and accuracy per step).
    """
    xp = _ops(geometry.vecs)
    fold, k = folds
    members = np.flatnonzero(fold >= 0)
    Xs = X.take(members)
    ys, fs = y_idx[members], fold[members]
    scored = [f for f in range(k) if (fs == f).any()]  # folds with validation rows
    weights = np.zeros((len(ys), len(scored)), np.float32)  # per fold: its training rows' weights, as in _Rows
    for i, f in enumerate(scored):
        train = fs != f
        weights[train, i] = _row_weights(cw, ys[train])
    validation = np.stack([fs == f for f in scored], 1)
    n_train = float(np.mean([np.count_nonzero(fs != f) for f in scored]))
    rows = _FoldRows(xp.asarray(Xs), xp.asarray(ys), xp.asarray(weights), geometry)
    is_val = xp.asarray(validation)
    n_val = xp.float32(is_val.sum(0))
    d, n_classes, n_folds = X.dim, len(cw), len(scored)
    AbT = xp.zeros((n_folds, n_classes, d + 1))  # each fold's [A^T, b], W = U A (_FoldRows)
    path: list[dict[str, float]] = []
    averaged: list[Any] = []
    best, stale = None, 0
    with xp.one_thread():  # small problems: thread barriers cost more than they save
        for relative in L2_PATH:
            strength = relative * geometry.scale
            AbT = _lbfgs_folds(rows, strength, AbT, geometry, PATH_ITERS, tol)
            z = rows.logits(AbT)  # (rows, folds, classes)
            log_loss = xp.logsumexp(z, 2) - xp.take_along(z, rows.classes(n_folds))[..., 0]
            losses = (xp.float64(log_loss * is_val).sum(0) / n_val).tolist()  # summed in float64
            accs = (xp.float32((z.argmax(2) == rows.y[:, None]) & is_val).sum(0) / n_val).tolist()
            mean = float(np.mean(losses))
            se = float(np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else 0.0
            path.append({"l2": strength, "val_loss": mean, "val_loss_se": se, "val_accuracy": float(np.mean(accs))})
            averaged.append(sum(AbT[f] for f in range(n_folds)) / n_folds)
            if best is None or mean < best:
                best, stale = mean, 0
            else:
                stale += 1
                if stale >= PATIENCE:
                    break  # past the optimum
    i_best = min(range(len(path)), key=lambda i: path[i]["val_loss"])
    threshold = path[i_best]["val_loss"] + path[i_best]["val_loss_se"]
    chosen = next(i for i in range(len(path)) if path[i]["val_loss"] <= threshold)  # strongest within 1 SE
    path[chosen]["chosen"] = 1.0
    AbT = averaged[chosen]
    W, b = geometry.vecs @ AbT[:, :-1].T, xp.copy(AbT[:, -1])
    return path[chosen]["l2"] * n_train / len(y_idx), W, b, path  # the optimal strength shrinks as 1/n


class _Geometry:
    """Mean and eigenbasis of the feature covariance (from a sample), for preconditioning.

    For L2 strength ``l2`` the solver works on V with W = P V, P = U diag(1 / sqrt(eig + s)),
    s = l2 * n_classes: the regularised Hessian is then close to a multiple of the identity,
    so L-BFGS needs few iterations. The problem solved is unchanged (penalty on ||W||²).
    Its arrays are on the sample's backend (numpy arrays, or torch tensors on the sample's device).
    """

    def __init__(self, sample: Any, n_classes: int) -> None:
        xp = _ops(sample)
        self.mu = sample.mean(0)
        centred = sample - self.mu
        eig, vecs = xp.eigh(xp.float64(centred.T @ centred / max(len(sample) - 1, 1)))
        eig = xp.clip_min(eig, 0.0)
        self.scale = float(eig.mean()) or 1.0  # L2 strengths are relative to the mean feature variance
        self.eig = xp.float32(eig + 1e-6 * float(eig.max()) + 1e-12)
        self.vecs = xp.float32(vecs)
        self.n_classes = n_classes

    def diag(self, l2: float) -> Any:
        """sqrt(eig + s): P = U / diag, P^-1 = diag * U^T."""
        return _ops(self.eig).sqrt(self.eig + l2 * self.n_classes)

    def on(self, xp: "_Ops") -> "_Geometry":
        """This geometry with its arrays on ``xp``'s backend and device (itself when they are there already)."""
        if _ops(self.vecs) == xp:
            return self
        moved = copy.copy(self)
        moved.mu, moved.eig, moved.vecs = xp.asarray(self.mu), xp.asarray(self.eig), xp.asarray(self.vecs)
        return moved


def _row_weights(cw: np.ndarray, y_idx: np.ndarray) -> np.ndarray:
    """Each row's class weight, normalised to sum to 1 (the loss is a weighted mean), float32."""
    w = cw[y_idx].astype(np.float64)
    return (w / w.sum()).astype(np.float32)


class _Rows:
    """The rows an objective sums over, as (X, y, weight) blocks on ``xp``'s backend, one chunk of the matrix
    at a time.

    Weights are the class weights normalised to sum to 1 over all rows (the loss is a weighted mean).
    Rows already in memory are converted (and moved to the device) once.
    """

    def __init__(self, X: FeatureMatrix, y_idx: np.ndarray, cw: np.ndarray, xp: "_Ops") -> None:
        self.X, self.y, self.w, self.xp = X, y_idx, _row_weights(cw, y_idx), xp
        self._cached = list(self._blocks()) if isinstance(X, ArrayMatrix) else None

    def _blocks(self) -> Iterator[tuple[Any, Any, Any]]:
        xp = self.xp
        for positions, block in self.X.chunks():
            yield xp.asarray(block), xp.asarray(self.y[positions]), xp.asarray(self.w[positions][:, None])

    passes = 0  # full passes over the rows (loss and gradient evaluations)

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        self.passes += 1
        return iter(self._cached) if self._cached is not None else self._blocks()


def _cross_entropy_grad_(z: Any, y: Any, w: Any) -> Any:
    """Weighted cross-entropy of the logits ``z`` (classes on the last axis) against the class indices ``y``
    (``z``'s shape, 1 on the last axis): ``w * (logsumexp(z) - z[y])`` per row; ``z`` becomes, in place, the
    gradient of the weighted sum with respect to the logits, ``w * (softmax(z) - onehot(y))``."""
    xp = _ops(z)
    z -= xp.amax(z, -1)
    target = xp.take_along(z, y)
    xp.exp_(z)
    total = z.sum(-1)[..., None]
    losses = w * (xp.log(total) - target)
    z /= total
    xp.put_along(z, y, xp.take_along(z, y) - 1.0)
    z *= w
    return losses


def _lbfgs(rows: _Rows, l2: float, W: Any, b: Any, geo: _Geometry, iters: int, tol: float) -> tuple[Any, Any]:
    """Minimise weighted mean cross-entropy of (X - mu) W + b, plus l2/2 ||W||²; warm-started at W, b.

    Loss and gradient are sums over the chunks of ``rows`` (full batch, one chunk in memory at a time).
    """
    xp = _ops(W)
    d = geo.diag(l2)[:, None]
    P = geo.vecs / d.T
    inv_eig = 1.0 / (d * d)  # P^T P
    n_w = W.shape[0] * W.shape[1]

    def loss_and_grad(theta: Any) -> tuple[float, Any]:
        V, c = theta[:n_w].reshape(W.shape), theta[n_w:]
        Wc = P @ V
        bias = c - geo.mu @ Wc
        loss = 0.0
        grad_x = xp.zeros_like(W)  # X^T dz, summed over chunks
        gsum = xp.zeros_like(c)
        for X, y, w in rows:
            z = xp.addmm(bias, X, Wc)  # logits, then (in place) the loss gradient
            loss += float(xp.float64(_cross_entropy_grad_(z, y[:, None], w)).sum())  # summed in float64
            gsum += z.sum(0)
            xp.addmm_(grad_x, X.T, z)
        loss += float(0.5 * l2 * (V * V * inv_eig).sum())
        grad_v = P.T @ (grad_x - geo.mu[:, None] * gsum) + l2 * inv_eig * V
        return loss, xp.concatenate([grad_v.reshape(-1), gsum])

    theta = _minimise(loss_and_grad, xp.concatenate([((geo.vecs.T @ W) * d).reshape(-1), b]), iters, tol)
    return P @ theta[:n_w].reshape(W.shape), xp.copy(theta[n_w:])


def _minimise(fg: Any, x: Any, iters: int, tol: float, memory: int = 10) -> Any:
    """L-BFGS (two-loop recursion) with Armijo backtracking; stops at ``iters`` iterations, when the
    largest gradient entry is below ``tol``, or when the loss stops decreasing (relative 1e-9)."""
    xp = _ops(x)
    f, g = fg(x)
    history: list[tuple[Any, Any, float]] = []
    for _ in range(iters):
        if float(abs(g).max()) <= tol:
            break
        q = xp.copy(g)
        alphas = []
        for s, yv, rho in reversed(history):
            a = rho * float(s @ q)
            q -= a * yv
            alphas.append(a)
        if history:
            s, yv, _ = history[-1]
            q *= float(s @ yv) / float(yv @ yv)
        for (s, yv, rho), a in zip(history, reversed(alphas)):
            q += s * (a - rho * float(yv @ q))
        direction = -q
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            history.clear()
            direction, slope = -g, -float(g @ g)
        step = 1.0
        for _ in range(30):
            x_new = x + step * direction
            f_new, g_new = fg(x_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break  # no decrease possible along this direction: converged to float precision
        s, yv = x_new - x, g_new - g
        sy = float(s @ yv)
        if sy > 1e-12:
            history.append((s, yv, 1.0 / sy))
            if len(history) > memory:
                history.pop(0)
        converged = f - f_new <= 1e-9 * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if converged:
            break
    return x


class _FoldRows:
    """The cross-validation subsample's rows, shared by its folds: centred and in the eigenbasis U of the feature
    covariance, with a column of ones, X_aug = [(X - mu) U, 1]. With W = U A, the logits (X - mu) W + b are
    X_aug [A; b] and the preconditioner is a diagonal scaling: no (d, d) product per loss evaluation. Each fold
    weighs its own training rows (``weights`` (rows, folds): as in ``_Rows``, zero on the fold's validation rows)."""

    def __init__(self, X: Any, y: Any, weights: Any, geo: _Geometry) -> None:
        self.xp = xp = _ops(X)
        self.X_aug = xp.concatenate([(X - geo.mu) @ geo.vecs, xp.ones_like(X[:, :1])], 1)
        self.y, self.weights = y, weights

    def classes(self, n_problems: int) -> Any:
        """Each row's class, (rows, n_problems, 1) (a broadcast view)."""
        return self.xp.broadcast_to(self.y[:, None, None], (len(self.y), n_problems, 1))

    def logits(self, AbT: Any) -> Any:
        """(rows, folds, classes) logits under each fold's [A^T, b] (folds, classes, d + 1)."""
        n_folds, k, d1 = AbT.shape
        return (self.X_aug @ AbT.reshape(n_folds * k, d1).T).reshape(-1, n_folds, k)


def _lbfgs_folds(rows: _FoldRows, l2: float, AbT: Any, geo: _Geometry, iters: int, tol: float) -> Any:
    """``_lbfgs`` for every fold at once, as one batched problem: fold f minimises its weighted mean cross-entropy
    plus l2/2 ||W_f||², warm-started at AbT[f] = [A^T, b] (classes, d + 1; W = U A), with its own L-BFGS state
    (``_minimise_folds``). Same preconditioning as ``_lbfgs``: L-BFGS runs on V = A · sqrt(eig + l2 · classes).
    Returns the folds' [A^T, b]."""
    xp = _ops(AbT)
    n_folds, k, d1 = AbT.shape
    d = geo.diag(l2)
    one = xp.ones_like(d[:1])
    scale = xp.concatenate([1.0 / d, one])  # [A^T, b] = [V^T, b] * scale
    inv_eig = xp.concatenate([1.0 / (d * d), 0 * one])  # the penalty's weights on [V^T, b]
    l2_inv_eig = l2 * inv_eig

    def loss_and_grad(theta: Any, folds: Any = None) -> tuple[Any, Any]:
        """Loss and gradient of each row of theta, the variables of fold ``folds[i]`` (None: of fold i)."""
        n_problems = len(theta)
        T = theta.reshape(n_problems, k, d1)  # [V^T, b] per fold
        w = (rows.weights if folds is None else rows.weights[:, folds])[:, :, None]
        z = rows.logits(T * scale)  # logits, then (in place) the loss gradient
        loss = xp.float64(_cross_entropy_grad_(z, rows.classes(n_problems), w)).sum(0)  # summed in float64
        grad = (z.reshape(len(z), -1).T @ rows.X_aug).reshape(T.shape) * scale
        xp.addcmul_(grad, l2_inv_eig, T)
        penalty = (T * T * inv_eig).reshape(n_problems, -1).sum(1)[:, None] * (0.5 * l2)
        return loss + xp.float64(penalty), grad.reshape(n_problems, -1)

    theta = xp.concatenate([AbT[..., :-1] * d, AbT[..., -1:]], 2).reshape(n_folds, -1)
    return _minimise_folds(loss_and_grad, theta, iters, tol).reshape(n_folds, k, d1) * scale


@np.errstate(divide="ignore", invalid="ignore")  # numpy: 1/s·y and s·y/y·y of pairs no problem keeps (masked)
def _minimise_folds(fg: Any, x: Any, iters: int, tol: float, memory: int = 10) -> Any:
    """``_minimise`` for F independent problems, the rows of x (F, n), side by side: ``fg`` gives every problem's
    loss (F, 1; float64) and gradient (F, n). Each problem keeps its own history, steps, Armijo backtracking and
    stopping tests; one that has stopped stays put while the others continue."""
    xp = _ops(x)
    f, g = fg(x)
    history: list[list[Any]] = []  # [s, y, rho] per iteration, oldest first; rho 0 where a problem did not keep it
    dense = True  # every running problem keeps every pair (the usual case)
    running = xp.asarray(np.ones((len(x), 1), bool))
    for _ in range(iters):
        running &= xp.amax(abs(g), 1) > tol
        if not running.any():
            break
        q = xp.copy(g)
        alphas = []
        for s, yv, rho in reversed(history):
            a = rho * _dot(s, q)
            xp.addcmul_(q, yv, a, value=-1.0)
            alphas.append(a)
        if history:
            q *= _initial_scaling(history, dense)
        for (s, yv, rho), a in zip(history, reversed(alphas)):
            xp.addcmul_(q, s, a - rho * _dot(yv, q))
        direction = -q
        slope = xp.float64(_dot(g, direction))
        restart = running & (slope >= 0)  # not a descent direction: restart from steepest descent
        if restart.any():
            for entry in history:
                entry[2] = xp.where(restart, 0.0, entry[2])
            dense = False
            direction = xp.where(restart, -g, direction)
            slope = xp.where(restart, -xp.float64(_dot(g, g)), slope)
        direction = xp.where(running, direction, 0.0)  # a stopped problem's trials stay at its x
        sufficient = 1e-4 * slope  # Armijo: f + 1e-4·step·slope (the same product: step is a power of 2)
        x_new = x + direction  # step 1
        f_new, g_new = fg(x_new)
        searching = running & ~(f_new <= f + sufficient)
        if searching.any():
            failed = _backtrack(fg, x, f, direction, sufficient, searching, x_new, f_new, g_new)
            if failed.any():  # no decrease possible along its direction: converged to float precision, stays put
                running &= ~failed
                x_new, f_new, g_new = (xp.where(failed, old, new) for old, new in ((x, x_new), (f, f_new), (g, g_new)))
        s, yv = x_new - x, g_new - g
        sy = _dot(s, yv)
        keep = running & (sy > 1e-12)
        history.append([s, yv, xp.where(keep, 1.0 / sy, 0.0)])
        if dense and bool((keep | ~running).all()):
            if len(history) > memory:
                history.pop(0)
        else:
            dense = _trim_history(history, running, memory)
        running &= ~(f - f_new <= 1e-9 * xp.clip_min(abs(f), 1.0))  # the loss stopped decreasing
        x, f, g = x_new, f_new, g_new
    return x


def _backtrack(fg: Any, x: Any, f: Any, direction: Any, sufficient: Any, searching: Any, x_new: Any, f_new: Any,
               g_new: Any) -> Any:
    """``_minimise``'s halving line search for the problems ``searching`` (F, 1) after step 1: each takes the
    first of steps 2^-1 .. 2^-29 that passes the Armijo test, written into x_new, f_new, g_new; several steps are
    evaluated in one call of ``fg(points, problems)`` (HALVINGS), so a long search costs a few calls, not 29.
    Returns the problems for which no step passed (F, 1)."""
    xp = _ops(x)
    todo = xp.flatnonzero(searching[:, 0])
    start, along, bound, slope = x[todo], direction[todo], f[todo, 0], sufficient[todo, 0]
    first_halving = 1
    for count in HALVINGS:
        steps = 0.5 ** xp.arange(first_halving, first_halving + count, dtype=x.dtype)
        first_halving += count
        trials = (start + steps[:, None, None] * along).reshape(-1, x.shape[1])  # count × len(todo) points
        f_trial, g_trial = fg(trials, xp.tile(todo, count))
        passed = f_trial.reshape(count, -1) <= bound + xp.float64(steps[:, None]) * slope
        done = passed.any(0)
        if done.any():
            pick = (xp.first_true(passed, 0) * len(todo) + xp.arange(0, len(todo)))[done]
            x_new[todo[done]], f_new[todo[done]], g_new[todo[done]] = trials[pick], f_trial[pick], g_trial[pick]
            if done.all():
                return xp.zeros_like(searching)
            left = ~done
            todo, start, along, bound, slope = todo[left], start[left], along[left], bound[left], slope[left]
    failed = xp.zeros_like(searching)
    failed[todo] = True
    return failed


def _dot(a: Any, b: Any) -> Any:
    """Row-wise dot products of (F, n) arrays, (F, 1)."""
    return (a * b).sum(1)[:, None]


def _initial_scaling(history: list[list[Any]], dense: bool) -> Any:
    """Each problem's s·y / y·y of its newest kept pair (1 with none), for ``_minimise_folds``."""
    if dense:
        s, yv, _ = history[-1]
        return _dot(s, yv) / _dot(yv, yv)
    xp = _ops(history[0][2])
    scaling = xp.ones_like(history[0][2])
    for s, yv, rho in history:  # oldest first: the newest kept pair wins
        scaling = xp.where(rho != 0, _dot(s, yv) / _dot(yv, yv), scaling)
    return scaling


def _trim_history(history: list[list[Any]], running: Any, memory: int) -> bool:
    """Keep each problem's newest ``memory`` pairs (rho 0 on older ones), drop the oldest pairs no running
    problem keeps; returns whether every running problem keeps every remaining pair."""
    xp = _ops(running)
    kept = xp.zeros_like(history[0][2])
    for entry in reversed(history):
        entry[2] = xp.where(kept < memory, entry[2], 0.0)
        kept += entry[2] != 0
    while history and not bool((history[0][2] != 0)[running].any()):
        history.pop(0)
    return all(bool((rho != 0)[running].all()) for _, _, rho in history)


# -- backends: the array operations whose spelling differs between numpy and torch ---------------------------------


class _NumpyOps:
    """The solver's array operations on numpy arrays (the CPU). Arithmetic, ``@``, indexing, ``reshape``,
    ``sum``/``mean``/``max``/``any``/``all``/``argmax`` and ``tolist`` are spelt alike for numpy arrays and torch
    tensors and are used directly; :class:`_TorchOps` has the same methods for tensors."""

    def asarray(self, a: Any) -> np.ndarray:
        """A numpy array, or a torch tensor (on any device), as a C-contiguous numpy array."""
        return np.ascontiguousarray(a if isinstance(a, np.ndarray) else a.detach().cpu().numpy())

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, np.float32)

    def zeros_like(self, a: np.ndarray) -> np.ndarray:
        return np.zeros_like(a)

    def ones_like(self, a: np.ndarray) -> np.ndarray:
        return np.ones_like(a)

    def arange(self, start: int, stop: int, dtype: Any = None) -> np.ndarray:
        return np.arange(start, stop, dtype=dtype)

    def copy(self, a: np.ndarray) -> np.ndarray:
        return a.copy()

    def float32(self, a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32)

    def float64(self, a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64)

    def concatenate(self, arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.concatenate(arrays, axis)

    def broadcast_to(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(a, shape)

    def tile(self, a: np.ndarray, count: int) -> np.ndarray:
        """``a`` repeated ``count`` times end to end (torch's ``repeat``)."""
        return np.tile(a, count)

    def where(self, condition: np.ndarray, a: Any, b: Any) -> np.ndarray:
        return np.where(condition, a, b)

    def flatnonzero(self, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    def first_true(self, mask: np.ndarray, axis: int) -> np.ndarray:
        """Index of the first True along ``axis`` (0 where there is none)."""
        return mask.argmax(axis)

    def amax(self, a: np.ndarray, axis: int) -> np.ndarray:
        """Maximum along ``axis``, kept as a length-1 axis."""
        return a.max(axis, keepdims=True)

    def clip_min(self, a: np.ndarray, low: float) -> np.ndarray:
        return np.maximum(a, low)

    def sqrt(self, a: np.ndarray) -> np.ndarray:
        return np.sqrt(a)

    def log(self, a: np.ndarray) -> np.ndarray:
        return np.log(a)

    def exp_(self, a: np.ndarray) -> None:
        np.exp(a, out=a)

    def logsumexp(self, a: np.ndarray, axis: int) -> np.ndarray:
        top = a.max(axis, keepdims=True)
        return np.log(np.exp(a - top).sum(axis)) + top.squeeze(axis)

    def take_along(self, a: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``a``'s entries at ``index`` along the last axis (``index``: ``a``'s shape but for that axis)."""
        return np.take_along_axis(a, index, -1)

    def put_along(self, a: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
        """``take_along``'s entries of ``a`` set to ``values``, in place."""
        np.put_along_axis(a, index, values, -1)

    def addmm(self, bias: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """bias + a @ b, a new array."""
        out = a @ b
        out += bias
        return out

    def addmm_(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """out += a @ b."""
        out += a @ b

    def addcmul_(self, out: np.ndarray, a: np.ndarray, b: np.ndarray, value: float = 1.0) -> None:
        """out += value * a * b (a * b: ``out``'s shape)."""
        product = a * b
        if value != 1.0:
            product *= value
        out += product

    def eigh(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors of a symmetric matrix, on one BLAS thread."""
        with self.one_thread():
            return np.linalg.eigh(a)

    def one_thread(self) -> AbstractContextManager:
        """OpenBLAS on one thread for the block (the eigh, the folds' path). On a 2-core machine, a 384² float64
        eigh took 17-27 ms on one thread, 17 ms on two when idle but 40-116 ms with another process busy; whole
        fits with the folds on two threads were ~10% faster idle, 40-50% slower beside a busy process."""
        from headstart.sdk import one_blas_thread

        return one_blas_thread()


class _TorchOps:
    """:class:`_NumpyOps`' operations on torch tensors on ``device``."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch, self.device = torch, torch.device(device)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TorchOps) and other.device == self.device

    def __hash__(self) -> int:
        return hash(self.device)

    def asarray(self, a: Any) -> Any:
        """A numpy array or a tensor as a tensor on the device (shares a CPU array's memory where it can)."""
        return self.torch.as_tensor(a, device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self.torch.zeros(shape, device=self.device)

    def zeros_like(self, a: Any) -> Any:
        return self.torch.zeros_like(a)

    def ones_like(self, a: Any) -> Any:
        return self.torch.ones_like(a)

    def arange(self, start: int, stop: int, dtype: Any = None) -> Any:
        return self.torch.arange(start, stop, dtype=dtype, device=self.device)

    def copy(self, a: Any) -> Any:
        return a.clone()

    def float32(self, a: Any) -> Any:
        return a.float()

    def float64(self, a: Any) -> Any:
        return a.double()

    def concatenate(self, arrays: list[Any], axis: int = 0) -> Any:
        return self.torch.cat(arrays, axis)

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Any:
        return a.expand(shape)

    def tile(self, a: Any, count: int) -> Any:
        return a.repeat(count)

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        return self.torch.where(condition, a, b)

    def flatnonzero(self, mask: Any) -> Any:
        return mask.nonzero()[:, 0]

    def first_true(self, mask: Any, axis: int) -> Any:
        return mask.byte().argmax(axis)

    def amax(self, a: Any, axis: int) -> Any:
        return a.amax(axis, keepdim=True)

    def clip_min(self, a: Any, low: float) -> Any:
        return a.clamp_min(low)

    def sqrt(self, a: Any) -> Any:
        return a.sqrt()

    def log(self, a: Any) -> Any:
        return a.log()

    def exp_(self, a: Any) -> None:
        a.exp_()

    def logsumexp(self, a: Any, axis: int) -> Any:
        return self.torch.logsumexp(a, axis)

    def take_along(self, a: Any, index: Any) -> Any:
        return a.gather(-1, index)

    def put_along(self, a: Any, index: Any, values: Any) -> None:
        a.scatter_(-1, index, values)

    def addmm(self, bias: Any, a: Any, b: Any) -> Any:
        return self.torch.addmm(bias, a, b)

    def addmm_(self, out: Any, a: Any, b: Any) -> None:
        out.addmm_(a, b)

    def addcmul_(self, out: Any, a: Any, b: Any, value: float = 1.0) -> None:
        out.addcmul_(a, b, value=value)

    def eigh(self, a: Any) -> tuple[Any, Any]:
        """On the CPU, on one thread (MKL's threaded eigh of a 384² matrix took 5 s here, single-threaded 17 ms)."""
        with self.one_thread():
            eig, vecs = self.torch.linalg.eigh(a.cpu())
        return eig.to(self.device), vecs.to(self.device)

    def one_thread(self) -> AbstractContextManager:
        from headstart.sdk import one_torch_thread

        return one_torch_thread()


_Ops = _NumpyOps | _TorchOps
_NUMPY = _NumpyOps()


def _backend(device: str) -> _Ops:
    """The solver's backend for a resolved device: numpy on the CPU (no torch import), torch on a GPU."""
    return _NUMPY if device == "cpu" else _torch_ops(device)


def _ops(a: Any) -> _Ops:
    """The backend of an array: numpy for a numpy array, torch (on the tensor's device) for a tensor."""
    return _NUMPY if isinstance(a, np.ndarray) else _torch_ops(a.device)


@functools.lru_cache(maxsize=None)
def _torch_ops(device: Any) -> _TorchOps:
    return _TorchOps(device)


@hookimpl
def register_heads(register):
    register(HeadSpec(
        name="linear",
        factory=LinearHead,
        description="multinomial logistic regression (L-BFGS, preconditioned; numpy on the CPU, PyTorch on a GPU), "
                    "L2 chosen by k-fold log-loss",
    ))
