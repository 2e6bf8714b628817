"""Fraud in sequences: PR-AUC on the held-out accounts of examples/transactions, at several label counts.

    python benchmarks/bench_sequences.py [--pool 20000] [--small-pool 3000] [--labelled 2000] [--test 2000]
        [--counts 100,400,1600] [--seeds 10] [--seeds-large 5] [--epochs 15] [--hidden 32] [--finetune-steps 60]

(a) what a fintech team writes today: hand-made aggregate features of each account's window (counts, sums,
amount statistics, time since last, recent bursts, country / category changes) + scikit-learn's
HistGradientBoostingClassifier, with its defaults and tuned (leaf size and learning rate chosen by stratified
3-fold PR-AUC on the labelled subset); (b) a headstart `linear` head on a randomly initialised encoder
(`pretrain --epochs 0`); (c) the same head on the encoder pretrained on the unlabelled pool (next-event
prediction; the hidden size with the lowest validation loss of ``--hidden``, epochs by the validation loss), on
one pretrained on only the first ``--small-pool`` accounts of the pool, and on one pretrained with contrastive
views of the same account (`--objective contrastive`); what `headstart sweep --metric average_precision
--save-best` gives (its default heads, the best on its validation split, refitted); (d) the pretrained encoder
fine-tuned end to end with a logistic output on the labelled subset (linear probe first, then
``--finetune-steps`` steps of both). Each labelled subset is a stratified sample of the labelled accounts
(seeded; at least 2 frauds); ``--seeds`` subsets at the smallest count, ``--seeds-large`` at the others; every
method sees the same subsets, so the per-seed differences to the baseline are paired. Train seconds: fitting on
the subset (features already computed / embedded; pretraining is timed once).
Writes benchmarks/results/sequences.json; `python benchmarks/report.py` renders it into docs/sequences.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, WORK, loadavg, machine  # noqa: E402

EVENTS = dict(group_by="account_id", order_by="ts", fields="log_amount,log_gap", categorical="category,country",
              window="48")
WINDOW = 48


def _data(args: argparse.Namespace) -> Path:
    folder = WORK / "transactions"
    params = {"pool": args.pool, "labelled": args.labelled, "test": args.test, "fraud_rate": args.fraud_rate,
              "seed": 0}
    stamp = folder / "params.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == params):
        sys.path.insert(0, str(ROOT / "examples" / "transactions"))
        from generate import main as generate

        for stale in folder.glob("pool-first-*.parquet"):
            stale.unlink()
        generate([str(folder), "--pool", str(args.pool), "--labelled", str(args.labelled), "--test", str(args.test),
                  "--fraud-rate", str(args.fraud_rate)])
        stamp.write_text(json.dumps(params))
    return folder


def aggregate_features(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(account ids, features, labels): per account, over its last WINDOW transactions, the aggregates a
    fraud team writes by hand."""
    import pyarrow.parquet as pq

    df = pq.read_table(path).to_pandas().sort_values(["account_id", "ts"], kind="stable")
    ids, rows, labels = [], [], []
    for account, g in df.groupby("account_id", sort=True):
        g = g.tail(WINDOW)
        amount, gap = g["amount"].to_numpy(), np.expm1(g["log_gap"].to_numpy())
        last5, countries, cats = g.tail(5), g["country"], g["category"]
        home = countries.mode().iloc[0]
        history_cats = set(cats.iloc[:-5])
        rows.append([
            len(g), amount.sum(), amount.mean(), amount.std(), amount.max(), amount.min(), amount[-1],
            amount[-1] / max(amount.mean(), 1e-6), gap[-1], gap[-5:].min(), gap[-5:].mean(),
            (gap[-10:] < 10).sum(), (amount[-5:] < 3).sum(), last5["amount"].max() / max(np.median(amount), 1e-6),
            countries.nunique(), (countries != home).mean(), float(countries.iloc[-1] != home),
            (last5["country"] != home).sum(), cats.nunique(), sum(c not in history_cats for c in last5["category"]),
            (g["ts"].iloc[-1] - g["ts"].iloc[0]).total_seconds() / 3600,
        ])
        ids.append(account)
        labels.append(g["label"].iloc[-1])
    return ids, np.asarray(rows, dtype=np.float64), np.asarray(labels)


def _embed(path: Path, backbone: Path, vocabulary: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    from headstart.engine.embed.items import ReaderOptions
    from headstart.engine.embed.pipeline import embed
    from headstart.engine.sequences.options import event_options

    events = event_options(**EVENTS, vocabulary=str(vocabulary))
    result = embed(str(path), f"onnx:{backbone / 'encoder.onnx'}", reader_options=ReaderOptions(events=events,
                                                                                                labelled=True),
                   progress=False)
    refs = [r.split(":", 1)[1].split("'")[1] for r in result.refs]  # "...:account_id='acct...' (rows a-b)"
    return refs, np.asarray(result.vectors, dtype=np.float32), np.asarray(result.labels)


def _subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified sample of ``n`` rows with at least 2 positives."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == "fraud"), np.flatnonzero(y != "fraud")
    n_pos = max(2, int(round(n * len(pos) / len(y))))
    return np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n - n_pos, replace=False)]))


def _ap(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y == "fraud", scores))


def _gbm(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=seed).fit(X, y == "fraud")
    return model.predict_proba(X_test)[:, 1]


GBM_GRID = [dict(min_samples_leaf=leaf, learning_rate=lr) for leaf in (5, 20) for lr in (0.05, 0.1)]


def _gbm_tuned(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
    """HistGradientBoosting with the grid's settings of the best mean PR-AUC over stratified 3-fold CV of the
    labelled subset (ties: the first, scikit-learn's defaults are in the grid), refitted on the whole subset."""
    import warnings

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold

    warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
    target = y == "fraud"
    folds = list(StratifiedKFold(3, shuffle=True, random_state=seed).split(X, target))
    scores = []
    for params in GBM_GRID:
        aps = []
        for train, val in folds:
            model = HistGradientBoostingClassifier(random_state=seed, **params).fit(X[train], target[train])
            aps.append(_ap(y[val], model.predict_proba(X[val])[:, 1]))
        scores.append(float(np.mean(aps)))
    best = GBM_GRID[int(np.argmax(scores))]
    return HistGradientBoostingClassifier(random_state=seed, **best).fit(X, target).predict_proba(X_test)[:, 1]


def _head(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
    from headstart.engine.heads.resolve import build_head

    head, _ = build_head("linear")
    head.fit(X, y)
    return head.predict_proba(X_test)[:, list(head.classes_).index("fraud")]


def _sweep(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int, picks: list[str]) -> np.ndarray:
    """What `headstart sweep --metric average_precision --save-best` gives: its default heads compared on its
    validation split, the best refitted on all the labelled rows; its choice is appended to ``picks``."""
    import tempfile

    from headstart.engine.heads.features import FeatureSet
    from headstart.engine.train.api import sweep

    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        result = sweep(FeatureSet.from_arrays(X, y), metric="average_precision", seed=seed,
                       save_best=Path(tmp) / "model")
    picks.append(str(result.best))
    proba = result.model.predict_proba_features(X_test)
    return proba[:, [str(c) for c in result.model.head.classes_].index("fraud")]


def _finetune(backbone: Path, data: tuple[list[Any], np.ndarray], test: list[Any], steps: int,
              seed: int) -> np.ndarray:
    """The pretrained encoder + a logistic output, linear probe then fine-tuned end to end (LP-FT): the output
    is first fitted on the frozen, standardised embeddings, then both train for ``steps`` Adam steps (batches
    of 32, balanced class weight, encoder learning rate 1e-4)."""
    import torch

    from headstart.engine.sequences.pretrain import _batch, load_encoder

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a small GRU: see pretrain's _one_thread
    encoder, config = load_encoder(backbone)
    arrays, y = data
    target = torch.tensor((y == "fraud").astype(np.float32))
    pos_weight = torch.tensor(float((target == 0).sum() / max(float(target.sum()), 1.0)))
    with torch.no_grad():
        frozen = torch.cat([encoder(*_batch(arrays, np.arange(b, min(b + 256, len(arrays)))))
                            for b in range(0, len(arrays), 256)])
    mean, std = frozen.mean(0), frozen.std(0).clamp(min=1e-6)
    out = torch.nn.Linear(config.dim, 1)
    probe = torch.optim.LBFGS(out.parameters(), max_iter=200)

    def closure() -> Any:
        probe.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out((frozen - mean) / std).squeeze(-1), target,
                                                                    pos_weight=pos_weight)
        loss = loss + 1e-2 * out.weight.pow(2).sum()
        loss.backward()
        return loss

    probe.step(closure)
    optimizer = torch.optim.Adam([{"params": encoder.parameters(), "lr": 1e-4}, {"params": out.parameters(),
                                                                                  "lr": 1e-3}])
    rng = np.random.default_rng(seed)
    encoder.train()
    for _ in range(steps):
        rows = rng.choice(len(arrays), min(32, len(arrays)), replace=False)
        x, mask = _batch(arrays, rows)
        logits = out((encoder(x, mask) - mean) / std).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target[rows], pos_weight=pos_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    scores = []
    with torch.no_grad():
        for b in range(0, len(test), 256):
            x, mask = _batch(test, np.arange(b, min(b + 256, len(test))))
            scores.append(torch.sigmoid(out((encoder(x, mask) - mean) / std).squeeze(-1)).numpy())
    return np.concatenate(scores)


def _windows(path: Path, vocabulary: Path) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    from headstart.engine.embed.items import ReaderOptions
    from headstart.engine.embed.sources import open_source
    from headstart.engine.sequences.options import event_options

    items = list(open_source(str(path), ReaderOptions(events=event_options(**EVENTS, vocabulary=str(vocabulary)),
                                                      labelled=True)))
    return ([it.ref.split(":", 1)[1].split("'")[1] for it in items], [it.payload for it in items],
            np.asarray([it.label for it in items]))


def rss_scale(sizes: list[int], backbone: Path) -> list[dict[str, Any]]:
    """Peak RSS of ``headstart embed`` (a child process, per-entity items) over generated tables of ``sizes``
    accounts (about 40 events each), written as Parquet in row groups: memory must not grow with the table."""
    import pyarrow.parquet as pq

    from _common import child_env, run_process

    sys.path.insert(0, str(ROOT / "examples" / "transactions"))
    from generate import generate

    rows = []
    for n in sizes:
        path = WORK / f"rss-{n}.parquet"
        if not path.exists():
            writer = None
            for first in range(0, n, 5000):  # generated and written in slices: the generator holds one slice
                table = generate(min(5000, n - first), 0.05, first, False, first)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table, row_group_size=65_536)
            writer.close()
        events = pq.ParquetFile(path).metadata.num_rows
        home = WORK / f"home-rss-{n}"
        shutil.rmtree(home, ignore_errors=True)
        cmd = [sys.executable, "-m", "headstart", "embed", str(path), "-b", f"onnx:{backbone / 'encoder.onnx'}",
               "--group-by", "account_id", "--order-by", "ts", "--fields", EVENTS["fields"], "--categorical",
               EVENTS["categorical"], "--vocabulary", str(backbone / "vocabulary.json"), "--window", "48", "--json"]
        result = run_process(cmd, child_env(2, home))
        summary = json.loads(result["stdout"])
        rows.append({"accounts": n, "events": events, "items": summary["rows"], "wall_s": result["wall_s"],
                     "peak_rss_mb": result["peak_rss_mb"]})
        print(f"{events:>10,} events  {summary['rows']:>8,} items  {result['wall_s']:.1f}s  "
              f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def _small_pool(data: Path, n: int) -> Path:
    """The first ``n`` accounts of the pool, as their own Parquet file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = data / f"pool-first-{n}.parquet"
    if not path.exists():
        table = pq.read_table(data / "pool.parquet")
        accounts = pc.unique(table["account_id"])[:n]
        pq.write_table(table.filter(pc.is_in(table["account_id"], accounts)), path, row_group_size=65_536)
    return path


def _pretrain(name: str, source: Path, epochs: int, hidden: int, objective: str) -> dict[str, Any]:
    from headstart.engine.sequences.encoder import EncoderConfig
    from headstart.engine.sequences.options import event_options
    from headstart.engine.sequences.pretrain import PretrainOptions, pretrain

    folder = WORK / f"seq-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    t = time.perf_counter()
    result = pretrain(str(source), event_options(**EVENTS, need_vocabulary=False), folder,
                      PretrainOptions(epochs=epochs, hidden=hidden, objective=objective),
                      log=lambda m: print(f"[{name}] {m}", file=sys.stderr))
    history = result.summary["history"]
    return {"folder": folder, "seconds": round(time.perf_counter() - t, 1), "objective": objective,
            "hidden": hidden, "accounts": result.summary["n_sequences"],
            "dim": EncoderConfig.from_json(result.summary["config"]).dim, "history": history,
            "best_epoch": result.summary["best_epoch"],
            "best_val_loss": min((h["val_loss"] for h in history), default=None)}


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--small-pool", type=int, default=3000, help="also pretrain on this many pool accounts")
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--fraud-rate", type=float, default=0.05)
    parser.add_argument("--counts", default="100,400,1600")
    parser.add_argument("--seeds", type=int, default=10, help="labelled subsets at the smallest count")
    parser.add_argument("--seeds-large", type=int, default=5, help="labelled subsets at the other counts")
    parser.add_argument("--epochs", type=int, default=15, help="at most (the validation loss stops earlier)")
    parser.add_argument("--hidden", default="32", help="GRU sizes tried; the lowest validation loss is used")
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--rss", default="", metavar="N,M",
                        help="only measure embed's peak RSS over tables of N and M accounts (needs a finished run); "
                             "added to the existing results")
    args = parser.parse_args(argv)
    if args.rss:
        path = RESULTS / "sequences.json"
        result = json.loads(path.read_text())
        result["rss"] = {"machine": {**machine(), "loadavg_end": loadavg()},
                         "rows": rss_scale([int(n) for n in args.rss.split(",")], WORK / "seq-pretrained")}
        path.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    import os

    os.environ.setdefault("HEADSTART_HOME", str(WORK / "home-sequences"))
    started = machine()
    data = _data(args)
    pool = data / "pool.parquet"
    candidates = [_pretrain(f"next-event-h{h}", pool, args.epochs, int(h), "next-event")
                  for h in args.hidden.split(",")]
    chosen = min(candidates, key=lambda c: c["best_val_loss"])  # by the validation loss, never by the test set
    shutil.rmtree(WORK / "seq-pretrained", ignore_errors=True)
    shutil.copytree(chosen["folder"], WORK / "seq-pretrained")
    encoders: dict[str, dict[str, Any]] = {
        "random": _pretrain("random", pool, 0, chosen["hidden"], "next-event"),
        "pretrained": {**chosen, "folder": WORK / "seq-pretrained"},
        "contrastive": _pretrain("contrastive", pool, args.epochs, chosen["hidden"], "contrastive")}
    if args.small_pool:
        encoders["small-pool"] = _pretrain("small-pool", _small_pool(data, args.small_pool), args.epochs,
                                           chosen["hidden"], "next-event")
    vocabulary = WORK / "seq-pretrained" / "vocabulary.json"
    for name in encoders:  # all read the pool's vocabulary (the small pool's may miss rare values)
        if encoders[name]["folder"] != WORK / "seq-pretrained":
            shutil.copy(vocabulary, encoders[name]["folder"] / "vocabulary.json")
    ids, agg, y = aggregate_features(data / "labelled.parquet")
    ids_t, agg_t, y_t = aggregate_features(data / "test.parquet")
    feats = {}
    for name in encoders:
        r_ids, X, r_y = _embed(data / "labelled.parquet", encoders[name]["folder"], vocabulary)
        t_ids, X_t, t_y = _embed(data / "test.parquet", encoders[name]["folder"], vocabulary)
        assert r_ids == ids and t_ids == ids_t and (r_y == y).all() and (t_y == y_t).all()
        feats[name] = (X, X_t)
    w_ids, windows, w_y = _windows(data / "labelled.parquet", vocabulary)
    wt_ids, windows_t, _ = _windows(data / "test.parquet", vocabulary)
    assert w_ids == ids and wt_ids == ids_t
    picks: dict[int, list[str]] = {}

    def linear(name: str) -> Any:
        return lambda rows, s, count: _head(feats[name][0][rows], y[rows], feats[name][1], s)

    methods = {
        "aggregates + HistGradientBoosting": lambda rows, s, count: _gbm(agg[rows], y[rows], agg_t, s),
        "aggregates + HistGradientBoosting, tuned by CV": lambda rows, s, count: _gbm_tuned(agg[rows], y[rows], agg_t,
                                                                                            s),
        "linear head, random encoder": linear("random"),
        "linear head, pretrained encoder": linear("pretrained"),
        "sweep's pick, pretrained encoder": lambda rows, s, count: _sweep(
            feats["pretrained"][0][rows], y[rows], feats["pretrained"][1], s, picks.setdefault(count, [])),
        **({f"linear head, encoder pretrained on {args.small_pool:,} accounts": linear("small-pool")}
           if args.small_pool else {}),
        "linear head, contrastive encoder": linear("contrastive"),
        "fine-tuned pretrained encoder": lambda rows, s, count: _finetune(
            encoders["pretrained"]["folder"], ([windows[i] for i in rows], y[rows]), windows_t, args.finetune_steps, s),
    }
    counts = [int(c) for c in args.counts.split(",")]
    rows_out, per_seed = [], {}
    for count in counts:
        n_seeds = args.seeds if count == min(counts) else args.seeds_large
        for method, fit in methods.items():
            aps, secs = [], []
            for seed in range(n_seeds):
                rows = _subset(y, count, seed)
                t = time.perf_counter()
                scores = fit(rows, seed, count)
                secs.append(time.perf_counter() - t)
                aps.append(_ap(y_t, scores))
            per_seed[(count, method)] = aps
            st = _stats(aps)
            rows_out.append({"labels": count, "method": method, "seeds": n_seeds, "pr_auc": st["mean"],
                             "pr_auc_sd": st["sd"], "pr_auc_min": round(float(np.min(aps)), 4),
                             "pr_auc_max": round(float(np.max(aps)), 4), "pr_auc_seeds": [round(a, 4) for a in aps],
                             "train_s": round(float(np.mean(secs)), 2)})
            print(f"{count:>6}  {method:<48} PR-AUC {st['mean']:.4f} ± {st['sd']:.3f}  train {np.mean(secs):.2f}s",
                  flush=True)
    comparisons = []
    for count in counts:  # paired by labelled subset: the pretrained encoder's heads minus the better baseline
        base = max(("aggregates + HistGradientBoosting", "aggregates + HistGradientBoosting, tuned by CV"),
                   key=lambda m: np.mean(per_seed[(count, m)]))
        for method in ("linear head, pretrained encoder", "sweep's pick, pretrained encoder",
                       "fine-tuned pretrained encoder"):
            diff = np.asarray(per_seed[(count, method)]) - np.asarray(per_seed[(count, base)])
            comparisons.append({"labels": count, "method": method, "baseline": base,
                                "diff_mean": round(float(diff.mean()), 4),
                                "diff_se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4),
                                "wins": int((diff > 0).sum()), "seeds": len(diff)})
    result = {"benchmark": "sequences", "machine": {**started, "loadavg_end": loadavg()},
              "data": {"pool_accounts": args.pool, "small_pool_accounts": args.small_pool,
                       "labelled_accounts": args.labelled, "test_accounts": args.test,
                       "fraud_rate": args.fraud_rate, "test_frauds": int((y_t == "fraud").sum()),
                       "window": WINDOW, "generator": "examples/transactions/generate.py"},
              "seeds": args.seeds, "seeds_large": args.seeds_large,
              "pretrain": {k: {kk: vv for kk, vv in v.items() if kk != "folder"} for k, v in encoders.items()},
              "hidden_candidates": [{"hidden": c["hidden"], "best_val_loss": c["best_val_loss"],
                                     "best_epoch": c["best_epoch"], "seconds": c["seconds"]} for c in candidates],
              "finetune_steps": args.finetune_steps, "sweep_picks": {str(k): v for k, v in picks.items()},
              "rows": rows_out, "comparisons": comparisons}
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "sequences.json"
    if previous.exists() and "rss" in json.loads(previous.read_text()):  # measured by --rss, kept
        result["rss"] = json.loads(previous.read_text())["rss"]
    (RESULTS / "sequences.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'sequences.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
