"""Head fit time and accuracy against scikit-learn on the same features, side by side in one run.

    python benchmarks/bench_heads.py                 # 200,000 × 384, 20 classes + the shipped example
    python benchmarks/bench_heads.py --n 20000 --no-mlp

Synthetic features imitate sentence embeddings: class-conditional Gaussian mixtures (4 modes per
class), mapped through a linear map with a power-law spectrum and a common offset, projected on
the unit sphere. Real features: MiniLM vectors of examples/support-tickets (train → test).

The linear comparison is at the same optimum: headstart's linear head chooses its L2 strength on
validation; scikit-learn's LogisticRegression gets the same strength (C = 1 / (l2·n)), starts from
zero and is stopped at the first L-BFGS iteration whose regularised log-loss (mean cross-entropy +
l2/2·||W||²) is within 0.001 % of headstart's (a callback on scipy's minimize records each iteration's
objective and time); n_iter_ and the objective trace are recorded, and both fits are scored again by
one float64 evaluator. If it never gets there, headstart (fixed l2) is timed to sklearn's best instead. Warnings (ConvergenceWarning) are shown and saved.
Writes benchmarks/results/heads.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import HOME, machine, save  # noqa: E402


def sphere_mixture(n: int, dim: int = 384, classes: int = 20, modes: int = 4, noise: float = 2.0,
                   decay: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm (n, dim) float32 features and integer labels (see the module docstring)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, modes, dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    Z = centres[y, rng.integers(0, modes, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    q, _ = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((dim, dim)))
    A = (q * (1.0 / np.arange(1, dim + 1) ** decay)).astype(np.float32)
    X = Z @ A.T
    offset = np.random.default_rng(seed + 2).standard_normal(dim).astype(np.float32)
    X += offset * 0.3 * np.linalg.norm(X, axis=1).mean() / np.linalg.norm(offset)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y


OBJECTIVE_RTOL = 1e-5  # "the same objective": within 0.001 % of the target


def objective(coef: np.ndarray, intercept: np.ndarray, X: np.ndarray, y_idx: np.ndarray, l2: float) -> float:
    """The regularised log-loss both fits minimise: mean cross-entropy + l2/2·||W||² (intercept free).

    scikit-learn's ``LogisticRegression(C)`` minimises C·sum(CE) + ||W||²/2, the same function times C·n
    when l2 = 1 / (C·n); both sides are scored by this one evaluator, in float64.
    """
    z = X.astype(np.float64) @ coef.T.astype(np.float64) + intercept.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y_idx)), y_idx].mean() + 0.5 * l2 * float((coef.astype(np.float64) ** 2).sum()))


def _fit(name: str, make: Callable[[], Any], Xtr, ytr, Xte, yte) -> tuple[dict[str, Any], Any]:
    """Fit and score one estimator; warnings are recorded (never hidden) and printed."""
    import warnings

    est = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        est.fit(Xtr, ytr)
        fit_s = time.perf_counter() - start
    for w in caught:
        print(f"    warning: {w.category.__name__}: {str(w.message).splitlines()[0]}", flush=True)
    start = time.perf_counter()
    accuracy = float(np.mean(np.asarray(est.predict(Xte)) == np.asarray(yte)))
    n_iter = getattr(est, "n_iter_", None)
    row = {"model": name, "fit_s": round(fit_s, 3), "predict_s": round(time.perf_counter() - start, 3),
           "accuracy": round(accuracy, 5), "n_iter": None if n_iter is None else int(np.max(n_iter)),
           "warnings": sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})}
    print(f"  {name:<58} fit {fit_s:8.2f}s  accuracy {accuracy:.4f}  n_iter {row['n_iter']}", flush=True)
    return row, est


def _with_objective(row: dict[str, Any], est: Any, Xtr, y_idx, l2: float) -> dict[str, Any]:
    row["objective"] = objective(est.coef_, est.intercept_, Xtr, y_idx, l2)
    print(f"    objective {row['objective']:.8f}", flush=True)
    return row


def time_to_objective(label: str, make: Callable[[int, float], Any], target: float, Xtr, ytr, Xte, yte, y_idx,
                      l2: float, start_iter: int, tol: float, max_iter: int) -> dict[str, Any]:
    """Fit ``make(max_iter, tol)`` from scratch, asking for more each time, until the objective is <= ``target``.

    A fit that stopped at max_iter gets twice the iterations; one that stopped on its tolerance gets a
    tolerance 10x smaller. "Reaches" allows a relative slack of OBJECTIVE_RTOL (float32 features end
    both solvers' line searches a few 1e-7 apart). The first fit that reaches the target counts (its
    own time: one solver run from zero, not the sum of the attempts); every attempt is listed. ``reached`` is False when
    max_iter reached the cap, the tolerance 1e-10, or three attempts stalled first.
    """
    attempts = []
    it = start_iter
    goal = target + OBJECTIVE_RTOL * abs(target)
    while True:
        row, est = _fit(f"{label}, max_iter={it}, tol={tol:g}", lambda: make(it, tol), Xtr, ytr, Xte, yte)
        _with_objective(row, est, Xtr, y_idx, l2)
        row.update(max_iter=it, tol=tol)
        attempts.append(row)
        stopped_on_tol = row["n_iter"] is not None and row["n_iter"] < it
        stalled = len(attempts) >= 3 and attempts[-3]["objective"] - row["objective"] <= 1e-9 * abs(target)
        if row["objective"] <= goal or (it >= max_iter and not stopped_on_tol) or tol <= 1e-10 or stalled:
            break
        if stopped_on_tol:
            tol /= 10
        else:
            it = min(2 * it, max_iter)
    final = dict(attempts[-1])
    final.update(model=label, reached=attempts[-1]["objective"] <= goal, target_objective=target,
                 objective_rtol=OBJECTIVE_RTOL,
                 attempts=[{k: a[k] for k in ("max_iter", "tol", "fit_s", "n_iter", "objective", "accuracy")}
                           for a in attempts])
    return final


@contextmanager
def _lbfgs_trace(trace: list[tuple[float, float]], goal: float) -> Iterator[None]:
    """Record (time, objective) after every L-BFGS iteration of scipy's minimize, and stop it at ``goal``.

    scikit-learn's lbfgs solver calls ``scipy.optimize.minimize``; the wrapper adds a callback that gets
    scipy's ``intermediate_result`` (the objective scikit-learn minimises: mean log-loss + l2/2·||W||²)
    and forwards ``x`` to scikit-learn's own callback. Reaching ``goal`` raises StopIteration, which
    scipy treats as a normal stop, so the fit ends there (one solver run from zero, no restart).
    """
    from scipy import optimize

    original = optimize.minimize

    def minimize(fun, x0, *args, callback=None, **kwargs):
        def record(intermediate_result):
            trace.append((time.perf_counter(), float(intermediate_result.fun)))
            if callback is not None:
                callback(intermediate_result.x)
            if intermediate_result.fun <= goal:
                raise StopIteration

        return original(fun, x0, *args, callback=record, **kwargs)

    optimize.minimize = minimize
    try:
        yield
    finally:
        optimize.minimize = original


def sklearn_to_objective(C: float, target: float, Xtr, ytr, Xte, yte, y_idx, l2: float,
                         max_iter: int) -> dict[str, Any]:
    """LogisticRegression(C) from zero, stopped when its objective first reaches ``target`` (+ OBJECTIVE_RTOL)."""
    from sklearn.linear_model import LogisticRegression

    goal = target + OBJECTIVE_RTOL * abs(target)
    trace: list[tuple[float, float]] = []
    label = f"sklearn LogisticRegression(lbfgs, C={C:.4g}) to headstart's objective"
    with _lbfgs_trace(trace, goal):
        start = time.perf_counter()
        row, est = _fit(label, lambda: LogisticRegression(C=C, max_iter=max_iter, tol=1e-10), Xtr, ytr, Xte, yte)
    _with_objective(row, est, Xtr, y_idx, l2)
    reached = next((i for i, (_, f) in enumerate(trace) if f <= goal), None)
    row.update(max_iter=max_iter, tol=1e-10, target_objective=target, objective_rtol=OBJECTIVE_RTOL,
               reached=reached is not None, lbfgs_objective_last=trace[-1][1] if trace else None,
               iterations_to_target=None if reached is None else reached + 1,
               seconds_to_target=None if reached is None else round(trace[reached][0] - start, 3),
               trace=[(round(t - start, 3), f) for t, f in trace[:: max(1, len(trace) // 50)]])
    print(f"    reached={row['reached']} after {row['iterations_to_target']} iterations, "
          f"{row['seconds_to_target']}s", flush=True)
    return row


def _mlp_models() -> list[tuple[str, Callable[[], Any]]]:
    from sklearn.neural_network import MLPClassifier

    from headstart.plugins.heads.mlp import MLPHead

    return [("headstart mlp(hidden=(512,))", lambda: MLPHead(hidden=(512,))),
            ("sklearn MLPClassifier((512,), early_stopping)",
             lambda: MLPClassifier(hidden_layer_sizes=(512,), early_stopping=True, random_state=0))]


def _example_features() -> tuple[np.ndarray, ...] | None:
    from headstart.engine.embed.pipeline import embed

    data = ROOT / "examples" / "support-tickets"
    tr, te = embed(str(data / "train.csv"), "minilm-l6", progress=False), embed(str(data / "test.csv"), "minilm-l6",
                                                                                 progress=False)
    return tr.vectors, np.asarray(tr.labels), te.vectors, np.asarray(te.labels)


def compare_linear(Xtr, ytr, Xte, yte, max_iter_cap: int) -> dict[str, Any]:
    """headstart linear vs LogisticRegression at the same strength, timed to the same objective value."""
    from sklearn.linear_model import LogisticRegression

    from headstart.plugins.heads.linear import LinearHead

    classes, y_idx = np.unique(ytr, return_inverse=True)
    chosen_row, chosen = _fit("headstart linear (l2 chosen on validation, then the final fit)", LinearHead,
                              Xtr, ytr, Xte, yte)
    l2 = chosen.l2_
    C = 1.0 / (l2 * len(ytr))
    _with_objective(chosen_row, chosen, Xtr, y_idx, l2)
    fixed_row, fixed = _fit(f"headstart linear(l2={l2:.3g}) (the final fit alone)", lambda: LinearHead(l2=l2),
                            Xtr, ytr, Xte, yte)
    _with_objective(fixed_row, fixed, Xtr, y_idx, l2)
    target = chosen_row["objective"]
    sk = sklearn_to_objective(C, target, Xtr, ytr, Xte, yte, y_idx, l2, max_iter_cap)
    rows = [chosen_row, fixed_row, sk]
    if not sk["reached"]:  # vice versa: headstart (fixed l2) run until it reaches sklearn's best objective
        rows.append(time_to_objective(f"headstart linear(l2={l2:.3g}) to sklearn's objective",
                                      lambda it, tol: LinearHead(l2=l2, max_iter=it, tol=tol), sk["objective"], Xtr,
                                      ytr, Xte, yte, y_idx, l2, start_iter=100, tol=1e-5, max_iter=max_iter_cap))
    defaults_row, defaults = _fit("sklearn LogisticRegression(lbfgs, defaults: C=1, max_iter=100)",
                                  LogisticRegression, Xtr, ytr, Xte, yte)
    rows.append(defaults_row)
    summary = {"l2": l2, "C": C, "target_objective": target, "sklearn_reached": sk["reached"],
               "linear_speedup_same_objective": round(sk["fit_s"] / chosen_row["fit_s"], 2) if sk["reached"] else None,
               "linear_speedup_same_objective_final_fit_only":
                   round(sk["fit_s"] / fixed_row["fit_s"], 2) if sk["reached"] else None}
    print(f"  same objective ({target:.6f}): sklearn {sk['fit_s']:.2f}s (n_iter {sk['n_iter']}, reached="
          f"{sk['reached']}) vs headstart {chosen_row['fit_s']:.2f}s incl. choosing l2 "
          f"({fixed_row['fit_s']:.2f}s final fit alone)", flush=True)
    return {"rows": rows, **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="synthetic training rows (test: n/10)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--no-mlp", action="store_true", help="skip the two MLPs (slow at 200k rows)")
    parser.add_argument("--no-real", action="store_true", help="skip the MiniLM example features")
    parser.add_argument("--max-iter-cap", type=int, default=3200,
                        help="largest max_iter tried when timing a solver to the other's objective")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for both sides (torch and numpy/scipy BLAS); 1 gives stable timings on a busy machine")
    parser.add_argument("--name", default="heads", help="result file: benchmarks/results/<name>.json")
    args = parser.parse_args()

    os.environ.setdefault("HEADSTART_HOME", str(HOME))  # the benchmarks' own store, never the user's cache
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    torch.zeros(8, 8) @ torch.zeros(8, 8)  # load torch's kernels before timing, as sklearn's are at import
    facts = machine()
    results: dict[str, Any] = {"machine": facts, "threads": args.threads, "n": args.n, "dim": args.dim,
                               "classes": args.classes, "datasets": []}
    X, y = sphere_mixture(args.n + args.n // 10, args.dim, args.classes)
    datasets = [(f"synthetic {args.n}x{args.dim}, {args.classes} classes",
                 (X[:args.n], y[:args.n], X[args.n:], y[args.n:]))]
    if not args.no_real:
        datasets.append(("MiniLM features, examples/support-tickets (225 train / 75 test)", _example_features()))
    for title, (Xtr, ytr, Xte, yte) in datasets:
        print(title, flush=True)
        entry = {"name": title, "n_train": len(ytr), "n_test": len(yte), **compare_linear(Xtr, ytr, Xte, yte,
                                                                                           args.max_iter_cap)}
        if not args.no_mlp:
            entry["mlp_rows"] = [_fit(name, make, Xtr, ytr, Xte, yte)[0] for name, make in _mlp_models()]
        results["datasets"].append(entry)
    print(f"written {save(args.name, results)}")


if __name__ == "__main__":
    main()
