"""Head fit time and accuracy against scikit-learn on the same features, side by side in one run.

    python benchmarks/bench_heads.py                 # 200,000 × 384, 20 classes + the shipped example
    python benchmarks/bench_heads.py --n 20000 --no-mlp

Synthetic features imitate sentence embeddings: class-conditional Gaussian mixtures (4 modes per
class), mapped through a linear map with a power-law spectrum and a common offset, projected on
the unit sphere. Real features: MiniLM vectors of examples/support-tickets (train → test).
Prints one table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def _run(name: str, make: Callable[[], Any], Xtr, ytr, Xte, yte) -> tuple[dict[str, Any], Any]:
    import warnings

    est = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at its default max_iter
        start = time.perf_counter()
        est.fit(Xtr, ytr)
        fit_s = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = float(np.mean(np.asarray(est.predict(Xte)) == np.asarray(yte)))
    row = {"model": name, "fit_s": round(fit_s, 3), "predict_s": round(time.perf_counter() - start, 3),
           "accuracy": round(accuracy, 5)}
    print(f"  {name:<42} fit {fit_s:8.2f}s  accuracy {accuracy:.4f}", flush=True)
    return row, est


def _models(mlp: bool) -> list[tuple[str, Callable[[], Any]]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from headstart.plugins.heads.linear import LinearHead
    from headstart.plugins.heads.mlp import MLPHead

    models = [("headstart linear", LinearHead), ("sklearn LogisticRegression(lbfgs, defaults)", LogisticRegression)]
    if mlp:
        models += [("headstart mlp(hidden=(512,))", lambda: MLPHead(hidden=(512,))),
                   ("sklearn MLPClassifier((512,), early_stopping)",
                    lambda: MLPClassifier(hidden_layer_sizes=(512,), early_stopping=True, random_state=0))]
    return models


def _example_features() -> tuple[np.ndarray, ...] | None:
    from headstart.engine.embed.pipeline import embed

    data = ROOT / "examples" / "support-tickets"
    tr, te = embed(str(data / "train.csv"), "minilm-l6", progress=False), embed(str(data / "test.csv"), "minilm-l6",
                                                                                 progress=False)
    return tr.vectors, np.asarray(tr.labels), te.vectors, np.asarray(te.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="synthetic training rows (test: n/10)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--no-mlp", action="store_true", help="skip the two MLPs (slow at 200k rows)")
    parser.add_argument("--no-real", action="store_true", help="skip the MiniLM example features")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for both sides (torch and numpy/scipy BLAS); 1 gives stable timings on a busy machine")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    torch.zeros(8, 8) @ torch.zeros(8, 8)  # load torch's kernels before timing, as sklearn's are at import
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": args.threads},
        "datasets": []}
    X, y = sphere_mixture(args.n + args.n // 10, args.dim, args.classes)
    datasets = [(f"synthetic {args.n}x{args.dim}, {args.classes} classes",
                 (X[:args.n], y[:args.n], X[args.n:], y[args.n:]))]
    if not args.no_real:
        datasets.append(("MiniLM features, examples/support-tickets (225 train / 75 test)", _example_features()))
    for title, (Xtr, ytr, Xte, yte) in datasets:
        print(title, flush=True)
        models = _models(not args.no_mlp)
        ours, linear = _run(*models[0], Xtr, ytr, Xte, yte)
        # The same objective at the same strength: sklearn's C = 1 / (l2 · n), run to convergence.
        C = 1.0 / (linear.l2_ * len(ytr))
        from sklearn.linear_model import LogisticRegression

        same_c = _run(f"sklearn LogisticRegression(lbfgs, C={C:.3g}, max_iter=1000)",
                      lambda: LogisticRegression(C=C, max_iter=1000), Xtr, ytr, Xte, yte)[0]
        rows = [ours, same_c] + [_run(name, make, Xtr, ytr, Xte, yte)[0] for name, make in models[1:]]
        summary = {}
        for key, theirs in (("same_c", rows[1]), ("default_c", rows[2])):
            summary[f"linear_speedup_vs_sklearn_lr_{key}"] = round(theirs["fit_s"] / ours["fit_s"], 2)
            summary[f"linear_accuracy_minus_sklearn_lr_{key}"] = round(ours["accuracy"] - theirs["accuracy"], 5)
            print(f"  linear vs sklearn LR ({key.replace('_', ' ')}): "
                  f"{summary[f'linear_speedup_vs_sklearn_lr_{key}']}x faster, accuracy "
                  f"{summary[f'linear_accuracy_minus_sklearn_lr_{key}']:+.4f}", flush=True)
        results["datasets"].append({"name": title, "n_train": len(ytr), "n_test": len(yte), "rows": rows, **summary})
    results["machine"]["load_avg_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_heads-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
