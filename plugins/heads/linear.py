"""``linear``: multinomial logistic regression in PyTorch (full-batch L-BFGS), L2 chosen by k-fold log-loss.

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
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from headstart.sdk import (ArrayMatrix, class_weights, FeatureMatrix, Head, HeadSpec, hookimpl, one_torch_thread,
                           resolve_device)

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
        import torch

        device = resolve_device(self.device)
        k = len(self.classes_)
        cw = class_weights(self.class_weight, y_idx, self.classes_)
        n = len(X)
        rng = np.random.default_rng(self.seed)
        start = self._start_point(X, device)
        path: list[dict[str, float]] = []
        if start is not None:
            W, b, l2, geometry, path = start
        elif n > WARM_ROWS:
            W, b, l2, geometry, path = self._warm_up(X, y_idx, cw, rng, device)
        else:
            sample = X.sample(min(n, COV_ROWS), rng)
            geometry = _Geometry(torch.from_numpy(X.take(sample)).to(device), k)
            W = torch.zeros(X.dim, k, device=device)
            b = torch.zeros(k, device=device)
            l2 = self.l2
            if l2 is None:
                folds = _stratified_folds(y_idx, self.val_fraction, rng)
                if folds is None:
                    l2 = geometry.scale * 1e-2
                else:
                    l2, W, b, path = _choose_l2(X, y_idx, folds, cw, geometry, self.tol, device)
        iters = self.max_iter or int(np.clip(FINAL_ROW_BUDGET // n, 10, 100))
        if start is not None and self.max_iter is None:
            iters = min(iters, REFIT_ITERS)  # it starts within the sampling noise of this optimum
        rows = _Rows(X, y_idx, cw, device)
        W, b = _lbfgs(rows, l2, W, b, geometry, iters, self.tol)
        self.fit_passes_ = rows.passes
        self.n_fit_rows_ = n
        self._geometry = geometry
        self.coef_ = W.T.contiguous().cpu().numpy()
        self.intercept_ = (b - geometry.mu @ W).cpu().numpy()
        self.l2_ = float(l2)
        self.l2_path_ = path

    def _warm_up(self, X: FeatureMatrix, y_idx: np.ndarray, cw: np.ndarray, rng: np.random.Generator,
                 device: str) -> tuple[Any, Any, float, "_Geometry", list[dict[str, float]]]:
        """Above WARM_ROWS rows: one sample of WARM_ROWS rows read into memory (short contiguous runs of a
        store's shards, see ``FeatureMatrix.sample``) gives the preconditioner (COV_ROWS of it), the folds
        that choose L2 (CV_ROWS of it) and an in-memory fit at that strength, where the full-batch fit starts
        (weights, bias, L2 for all n rows, geometry, path)."""
        import torch

        n, k = len(X), len(self.classes_)
        warm = X.sample(WARM_ROWS, rng)
        Xw, yw = X.take(warm), y_idx[warm]
        cov = np.sort(rng.choice(len(warm), min(len(warm), COV_ROWS), replace=False))
        geometry = _Geometry(torch.from_numpy(Xw[cov]).to(device), k)
        W = torch.zeros(X.dim, k, device=device)
        b = torch.zeros(k, device=device)
        l2, path = self.l2, []
        if l2 is None:
            folds = _stratified_folds(yw, self.val_fraction, rng)
            if folds is None:
                l2 = geometry.scale * 1e-2
            else:
                l2, W, b, path = _choose_l2(ArrayMatrix(Xw), yw, folds, cw, geometry, self.tol, device)
                l2 *= len(warm) / n  # chosen for the sample's rows; the optimal strength shrinks as 1/n
        W, b = _lbfgs(_Rows(ArrayMatrix(Xw), yw, cw, device), l2, W, b, geometry, WARM_ITERS, self.tol)
        return W, b, l2, geometry, path

    def _start_point(self, X: FeatureMatrix, device: str) -> tuple[Any, Any, float, "_Geometry", list] | None:
        """(W, b, l2, geometry, path) from the head given to :meth:`start_from`, or None."""
        import torch

        fitted = getattr(self, "_start", None)
        self._start = None
        geometry = getattr(fitted, "_geometry", None)
        if (fitted is None or geometry is None or not hasattr(fitted, "coef_")
                or fitted.coef_.shape[1] != X.dim or list(fitted.classes_) != list(self.classes_)):
            return None
        W = torch.from_numpy(np.ascontiguousarray(fitted.coef_.T, dtype=np.float32)).to(device)
        b = torch.from_numpy(np.asarray(fitted.intercept_, dtype=np.float32)).to(device) + geometry.mu @ W
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
               tol: float, device: str) -> tuple[float, Any, Any, list[dict[str, float]]]:
    """Stratified k-fold path of strengths (strong → weak, warm-started per fold), scored by mean validation
    log-loss; the strongest strength within one standard error of the best mean is chosen (one-SE rule).

    Returns the strength for all n rows (scaled by the folds' training size / n), the fold-averaged weights
    at that strength (the final fit's starting point) and the path (mean/SE of loss and accuracy per step).
    """
    import torch

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
    rows = _FoldRows(torch.from_numpy(Xs).to(device), torch.from_numpy(ys).to(device), torch.from_numpy(weights).to(device),
                     geometry)
    is_val = torch.from_numpy(validation).to(device)
    n_val = is_val.sum(0).float()
    d, n_classes, n_folds = X.dim, len(cw), len(scored)
    AbT = torch.zeros(n_folds, n_classes, d + 1, device=device)  # each fold's [A^T, b], W = U A (_FoldRows)
    path: list[dict[str, float]] = []
    averaged: list[tuple[Any, Any]] = []
    best, stale = None, 0
    with one_torch_thread():  # small problems: thread barriers cost more than they save
        for relative in L2_PATH:
            strength = relative * geometry.scale
            AbT = _lbfgs_folds(rows, strength, AbT, geometry, PATH_ITERS, tol)
            z = rows.logits(AbT)  # (rows, folds, classes)
            log_loss = torch.logsumexp(z, 2) - z.gather(2, rows.classes(n_folds))[..., 0]
            losses = ((log_loss * is_val).sum(0) / n_val).tolist()
            accs = (((z.argmax(2) == rows.y[:, None]) & is_val).sum(0) / n_val).tolist()
            mean = float(np.mean(losses))
            se = float(np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else 0.0
            path.append({"l2": strength, "val_loss": mean, "val_loss_se": se, "val_accuracy": float(np.mean(accs))})
            averaged.append(sum(AbT.unbind(0)) / n_folds)
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
    W, b = geometry.vecs @ AbT[:, :-1].T, AbT[:, -1].contiguous()
    return path[chosen]["l2"] * n_train / len(y_idx), W, b, path  # the optimal strength shrinks as 1/n


class _Geometry:
    """Mean and eigenbasis of the feature covariance (from a sample), for preconditioning.

    For L2 strength ``l2`` the solver works on V with W = P V, P = U diag(1 / sqrt(eig + s)),
    s = l2 * n_classes: the regularised Hessian is then close to a multiple of the identity,
    so L-BFGS needs few iterations. The problem solved is unchanged (penalty on ||W||²).
    """

    def __init__(self, sample: Any, n_classes: int) -> None:
        import torch

        self.mu = sample.mean(0)
        centred = sample - self.mu
        cov = (centred.T @ centred / max(len(sample) - 1, 1)).double()
        with one_torch_thread():  # MKL's threaded eigh of a 384² matrix took 5 s here, single-threaded 17 ms
            eig, vecs = torch.linalg.eigh(cov.cpu())
        eig, vecs = eig.to(sample.device), vecs.to(sample.device)
        eig = eig.clamp_min(0)
        self.scale = float(eig.mean()) or 1.0  # L2 strengths are relative to the mean feature variance
        self.eig = (eig + 1e-6 * float(eig.max()) + 1e-12).float()
        self.vecs = vecs.float()
        self.n_classes = n_classes

    def diag(self, l2: float) -> Any:
        """sqrt(eig + s): P = U / diag, P^-1 = diag * U^T."""
        return (self.eig + l2 * self.n_classes).sqrt()


def _row_weights(cw: np.ndarray, y_idx: np.ndarray) -> np.ndarray:
    """Each row's class weight, normalised to sum to 1 (the loss is a weighted mean), float32."""
    w = cw[y_idx].astype(np.float64)
    return (w / w.sum()).astype(np.float32)


class _Rows:
    """The rows an objective sums over, as (X, y, weight) tensor blocks, one chunk of the matrix at a time.

    Weights are the class weights normalised to sum to 1 over all rows (the loss is a weighted mean).
    Rows already in memory are converted to tensors (and moved to the device) once.
    """

    def __init__(self, X: FeatureMatrix, y_idx: np.ndarray, cw: np.ndarray, device: str) -> None:
        self.X, self.y, self.w, self.device = X, y_idx, _row_weights(cw, y_idx), device
        self._cached = list(self._blocks()) if isinstance(X, ArrayMatrix) else None

    def _blocks(self) -> Iterator[tuple[Any, Any, Any]]:
        import torch

        for positions, block in self.X.chunks():
            yield (torch.from_numpy(block).to(self.device), torch.from_numpy(self.y[positions]).to(self.device),
                   torch.from_numpy(self.w[positions])[:, None].to(self.device))

    passes = 0  # full passes over the rows (loss and gradient evaluations)

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        self.passes += 1
        return iter(self._cached) if self._cached is not None else self._blocks()


def _cross_entropy_grad_(z: Any, y: Any, w: Any, minus_one: Any) -> Any:
    """Weighted cross-entropy of the logits ``z`` (classes on the last axis) against the class indices ``y``
    (``z``'s shape, 1 on the last axis): ``w * (logsumexp(z) - z[y])`` per row; ``z`` becomes, in place, the
    gradient of the weighted sum with respect to the logits, ``w * (softmax(z) - onehot(y))``. ``minus_one``:
    -1s shaped like ``y``."""
    z -= z.amax(-1, keepdim=True)
    target = z.gather(-1, y)
    z.exp_()
    total = z.sum(-1, keepdim=True)
    losses = w * (total.log() - target)
    z /= total
    z.scatter_add_(-1, y, minus_one)
    z *= w
    return losses


def _lbfgs(rows: _Rows, l2: float, W: Any, b: Any, geo: _Geometry, iters: int, tol: float):
    """Minimise weighted mean cross-entropy of (X - mu) W + b, plus l2/2 ||W||²; warm-started at W, b.

    Loss and gradient are sums over the chunks of ``rows`` (full batch, one chunk in memory at a time).
    """
    import torch

    d = geo.diag(l2)[:, None]
    P = geo.vecs / d.T
    inv_eig = 1.0 / (d * d)  # P^T P
    n_w = W.numel()

    def loss_and_grad(theta: Any) -> tuple[float, Any]:
        V, c = theta[:n_w].view_as(W), theta[n_w:]
        Wc = P @ V
        bias = c - geo.mu @ Wc
        loss = 0.0
        grad_x = torch.zeros_like(W)  # X^T dz, summed over chunks
        gsum = torch.zeros_like(c)
        for X, y, w in rows:
            z = torch.addmm(bias, X, Wc)  # logits, then (in place) the loss gradient
            loss += float(_cross_entropy_grad_(z, y[:, None], w, torch.full_like(w, -1.0)).sum())
            gsum += z.sum(0)
            grad_x.addmm_(X.T, z)
        loss += float(0.5 * l2 * (V * V * inv_eig).sum())
        grad_v = P.T @ (grad_x - torch.outer(geo.mu, gsum)) + l2 * inv_eig * V
        return loss, torch.cat([grad_v.flatten(), gsum])

    theta = _minimise(loss_and_grad, torch.cat([((geo.vecs.T @ W) * d).flatten(), b]), iters, tol)
    return P @ theta[:n_w].view_as(W), theta[n_w:].clone()


def _minimise(fg: Any, x: Any, iters: int, tol: float, memory: int = 10) -> Any:
    """L-BFGS (two-loop recursion) with Armijo backtracking; stops at ``iters`` iterations, when the
    largest gradient entry is below ``tol``, or when the loss stops decreasing (relative 1e-9)."""
    f, g = fg(x)
    history: list[tuple[Any, Any, float]] = []
    for _ in range(iters):
        if float(g.abs().max()) <= tol:
            break
        q = g.clone()
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
        import torch

        self.X_aug = torch.cat([(X - geo.mu) @ geo.vecs, torch.ones_like(X[:, :1])], 1)
        self.y, self.weights = y, weights
        self.minus_one = torch.full_like(X[:, :1, None], -1.0)

    def classes(self, n_problems: int) -> Any:
        """Each row's class, (rows, n_problems, 1)."""
        return self.y[:, None, None].expand(-1, n_problems, 1)

    def logits(self, AbT: Any) -> Any:
        """(rows, folds, classes) logits under each fold's [A^T, b] (folds, classes, d + 1)."""
        n_folds, k, d1 = AbT.shape
        return (self.X_aug @ AbT.reshape(n_folds * k, d1).T).view(-1, n_folds, k)


def _lbfgs_folds(rows: _FoldRows, l2: float, AbT: Any, geo: _Geometry, iters: int, tol: float) -> Any:
    """``_lbfgs`` for every fold at once, as one batched problem: fold f minimises its weighted mean cross-entropy
    plus l2/2 ||W_f||², warm-started at AbT[f] = [A^T, b] (classes, d + 1; W = U A), with its own L-BFGS state
    (``_minimise_folds``). Same preconditioning as ``_lbfgs``: L-BFGS runs on V = A · sqrt(eig + l2 · classes).
    Returns the folds' [A^T, b]."""
    import torch

    n_folds, k, d1 = AbT.shape
    d = geo.diag(l2)
    one = d.new_ones(1)
    scale = torch.cat([1.0 / d, one])  # [A^T, b] = [V^T, b] * scale
    inv_eig = torch.cat([1.0 / (d * d), 0 * one])  # the penalty's weights on [V^T, b]
    l2_inv_eig = l2 * inv_eig

    def loss_and_grad(theta: Any, folds: Any = None) -> tuple[Any, Any]:
        """Loss and gradient of each row of theta, the variables of fold ``folds[i]`` (None: of fold i)."""
        n_problems = len(theta)
        T = theta.view(n_problems, k, d1)  # [V^T, b] per fold
        w = (rows.weights if folds is None else rows.weights[:, folds])[:, :, None]
        y = rows.classes(n_problems)
        z = rows.logits(T * scale)  # logits, then (in place) the loss gradient
        loss = _cross_entropy_grad_(z, y, w, rows.minus_one.expand(-1, n_problems, 1)).sum(0)
        grad = torch.addcmul((z.view(len(z), -1).T @ rows.X_aug).view_as(T) * scale, l2_inv_eig, T)
        penalty = (T * T * inv_eig).view(n_problems, -1).sum(1, keepdim=True) * (0.5 * l2)
        return loss.double() + penalty.double(), grad.view(n_problems, -1)

    theta = torch.cat([AbT[..., :-1] * d, AbT[..., -1:]], 2).view(n_folds, -1)
    return _minimise_folds(loss_and_grad, theta, iters, tol).view(n_folds, k, d1) * scale


def _minimise_folds(fg: Any, x: Any, iters: int, tol: float, memory: int = 10) -> Any:
    """``_minimise`` for F independent problems, the rows of x (F, n), side by side: ``fg`` gives every problem's
    loss (F, 1; float64) and gradient (F, n). Each problem keeps its own history, steps, Armijo backtracking and
    stopping tests; one that has stopped stays put while the others continue."""
    import torch

    f, g = fg(x)
    history: list[list[Any]] = []  # [s, y, rho] per iteration, oldest first; rho 0 where a problem did not keep it
    dense = True  # every running problem keeps every pair (the usual case)
    running = torch.ones(len(x), 1, dtype=torch.bool, device=x.device)
    for _ in range(iters):
        running &= g.abs().amax(1, keepdim=True) > tol
        if not running.any():
            break
        q = g.clone()
        alphas = []
        for s, yv, rho in reversed(history):
            a = rho * _dot(s, q)
            q.addcmul_(yv, a, value=-1.0)
            alphas.append(a)
        if history:
            q *= _initial_scaling(history, dense)
        for (s, yv, rho), a in zip(history, reversed(alphas)):
            q.addcmul_(s, a - rho * _dot(yv, q))
        direction = q.neg_()
        slope = _dot(g, direction).double()
        restart = running & (slope >= 0)  # not a descent direction: restart from steepest descent
        if restart.any():
            for entry in history:
                entry[2] = torch.where(restart, 0.0, entry[2])
            dense = False
            direction = torch.where(restart, -g, direction)
            slope = torch.where(restart, -_dot(g, g).double(), slope)
        direction = torch.where(running, direction, 0.0)  # a stopped problem's trials stay at its x
        sufficient = 1e-4 * slope  # Armijo: f + 1e-4·step·slope (the same product: step is a power of 2)
        x_new = x + direction  # step 1
        f_new, g_new = fg(x_new)
        searching = running & ~(f_new <= f + sufficient)
        if searching.any():
            failed = _backtrack(fg, x, f, direction, sufficient, searching, x_new, f_new, g_new)
            if failed.any():  # no decrease possible along its direction: converged to float precision, stays put
                running &= ~failed
                x_new, f_new, g_new = (torch.where(failed, old, new) for old, new in ((x, x_new), (f, f_new), (g, g_new)))
        s, yv = x_new - x, g_new - g
        sy = _dot(s, yv)
        keep = running & (sy > 1e-12)
        history.append([s, yv, torch.where(keep, 1.0 / sy, 0.0)])
        if dense and bool((keep | ~running).all()):
            if len(history) > memory:
                history.pop(0)
        else:
            dense = _trim_history(history, running, memory)
        running &= ~(f - f_new <= 1e-9 * f.abs().clamp_min(1.0))  # the loss stopped decreasing
        x, f, g = x_new, f_new, g_new
    return x


def _backtrack(fg: Any, x: Any, f: Any, direction: Any, sufficient: Any, searching: Any, x_new: Any, f_new: Any,
               g_new: Any) -> Any:
    """``_minimise``'s halving line search for the problems ``searching`` (F, 1) after step 1: each takes the
    first of steps 2^-1 .. 2^-29 that passes the Armijo test, written into x_new, f_new, g_new; several steps are
    evaluated in one call of ``fg(points, problems)`` (HALVINGS), so a long search costs a few calls, not 29.
    Returns the problems for which no step passed (F, 1)."""
    import torch

    todo = searching[:, 0].nonzero()[:, 0]
    start, along, bound, slope = x[todo], direction[todo], f[todo, 0], sufficient[todo, 0]
    first_halving = 1
    for count in HALVINGS:
        steps = 0.5 ** torch.arange(first_halving, first_halving + count, dtype=x.dtype, device=x.device)
        first_halving += count
        trials = (start + steps[:, None, None] * along).view(-1, x.shape[1])  # count × len(todo) points
        f_trial, g_trial = fg(trials, todo.repeat(count))
        passed = f_trial.view(count, -1) <= bound + steps[:, None].double() * slope
        done = passed.any(0)
        if done.any():
            pick = (passed.byte().argmax(0) * len(todo) + torch.arange(len(todo), device=x.device))[done]
            x_new[todo[done]], f_new[todo[done]], g_new[todo[done]] = trials[pick], f_trial[pick], g_trial[pick]
            if done.all():
                return torch.zeros_like(searching)
            left = ~done
            todo, start, along, bound, slope = todo[left], start[left], along[left], bound[left], slope[left]
    failed = torch.zeros_like(searching)
    failed[todo] = True
    return failed


def _dot(a: Any, b: Any) -> Any:
    """Row-wise dot products of (F, n) tensors, (F, 1)."""
    return (a * b).sum(1, keepdim=True)


def _initial_scaling(history: list[list[Any]], dense: bool) -> Any:
    """Each problem's s·y / y·y of its newest kept pair (1 with none), for ``_minimise_folds``."""
    import torch

    if dense:
        s, yv, _ = history[-1]
        return _dot(s, yv) / _dot(yv, yv)
    scaling = torch.ones_like(history[0][2])
    for s, yv, rho in history:  # oldest first: the newest kept pair wins
        scaling = torch.where(rho != 0, _dot(s, yv) / _dot(yv, yv), scaling)
    return scaling


def _trim_history(history: list[list[Any]], running: Any, memory: int) -> bool:
    """Keep each problem's newest ``memory`` pairs (rho 0 on older ones), drop the oldest pairs no running
    problem keeps; returns whether every running problem keeps every remaining pair."""
    import torch

    kept = torch.zeros_like(history[0][2])
    for entry in reversed(history):
        entry[2] = torch.where(kept < memory, entry[2], 0.0)
        kept += entry[2] != 0
    while history and not bool((history[0][2] != 0)[running].any()):
        history.pop(0)
    return all(bool((rho != 0)[running].all()) for _, _, rho in history)


@hookimpl
def register_heads(register):
    register(HeadSpec(
        name="linear",
        factory=LinearHead,
        description="multinomial logistic regression (PyTorch L-BFGS, preconditioned), L2 chosen by k-fold log-loss",
    ))
