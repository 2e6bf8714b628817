"""Wall clock of ``headstart finetune --objective contrastive`` in a fresh process, by code path, vs SetFit's.

    python benchmarks/bench_fewshot_cli.py [--tasks fortunes-short,debian6] [--k 8] [--seed 0] [--repeats 2]
        [--threads 1,2] [--paths before,torch,after] [--no-setfit]

For each task (benchmarks/_fewshot_data.py, sample ``--seed``, k items per class: fortunes-short = 2 classes, debian6 =
6 classes) and thread count (``--threads``: OMP/MKL threads of every process, SetFit's too; 2 = this machine's
default) every run is a new process with its own new HEADSTART_HOME that shares only the base
MiniLM export and its graph-patch plan (one-time costs, measured separately as ``first run``); the items are
embedded afresh, as new data would be. Runs of the code paths alternate, on the same machine at the same time:

* ``after``: ``headstart finetune TRAIN.csv --backbone minilm --objective contrastive --head linear -o M --json``;
* ``torch``: the same through benchmarks/_fewshot_cli_paths.py with the backbone's numpy twin withheld: the
  PyTorch body (plain-PyTorch BERT, fused AdamW), as before the numpy body;
* ``before``: the same through benchmarks/_fewshot_cli_paths.py (Hugging Face's BertModel as the trainable body,
  torch.optim's AdamW: the imports of transformers and torch._dynamo are back; the items embedded with the base
  backbone first; an unfused graph copied into place).

Phases per run: ``wall`` (the parent's clock: interpreter start to exit), ``cpu`` (the child's user + system
seconds, all threads: the figure least moved by other jobs on a shared machine), ``api`` (the fine-tune call itself:
``training.seconds`` of the model's manifest: embedding, body, cache, cross-validation, final run, head, export
and parity, model folder), ``startup`` = wall - api (interpreter, CLI, plugin loading, the head's parameter check, process exit),
``body+cache`` and ``finetuner`` (the finetuner's own ``cache_seconds`` / ``seconds``); one extra run per path
with ``python -X importtime`` gives the import seconds by top-level package. SetFit 1.2 (the venv of
bench_fewshot.py) runs on the same CSV once per timed round, alternating with ours: its whole process (model load,
train, predict 2k items) and its own train seconds (model load + train), medians; the ratios: our wall to its wall,
our wall to its train seconds (``vs_setfit_train``, the strict one: our interpreter start, imports, export and parity
gate against its training alone) and our ``api`` to its train seconds. Bytecode is compiled first (``compileall``),
as a regular install has it. ``first run``: ``after`` in an empty home (base
export with parity gate, patch plan, then the fine-tune); the base export's own seconds come from its manifest.

Writes benchmarks/results/fewshot_cli.json and prints the table. Record the machine's load with
HEADSTART_BENCH_NOTES (machine.notes); the load average before and after every run is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, WORK, child_env, loadavg, machine, save, table  # noqa: E402
from _corpus import write_labelled_csv  # noqa: E402
from _fewshot_data import TASKS, sample  # noqa: E402

RUNS = WORK / "fewshot_cli"
PATHS = Path(__file__).resolve().parent / "_fewshot_cli_paths.py"
IMPORT_GROUPS = ("torch._dynamo", "torch", "transformers", "sklearn", "scipy", "pandas", "sympy", "onnxruntime",
                 "onnx", "headstart")


def finetune_cmd(path: str, train: Path, out: Path, importtime: bool = False) -> list[str]:
    entry = ["-m", "headstart"] if path == "after" else [str(PATHS), path]
    return [sys.executable, *(["-X", "importtime"] if importtime else []), *entry, "finetune", str(train),
            "--backbone", "minilm", "--objective", "contrastive", "--head", "linear", "-o", str(out), "--json",
            "--no-progress"]


def fresh_home(base: Path, name: str) -> Path:
    """A new HEADSTART_HOME sharing the base export (symlinked) and the patch plans (copied) of ``base``."""
    home = RUNS / "homes" / name
    shutil.rmtree(home, ignore_errors=True)
    (home / "exports").mkdir(parents=True)
    for entry in (base / "exports").iterdir():
        if not entry.name.startswith("finetuned"):
            (home / "exports" / entry.name).symlink_to(entry.resolve())
    if (base / "finetuned" / "plans").is_dir():
        shutil.copytree(base / "finetuned" / "plans", home / "finetuned" / "plans")
    return home


def import_seconds(stderr: str) -> dict[str, float]:
    """Self time of every imported module (``-X importtime``), summed per group (first matching prefix)."""
    sums: Counter[str] = Counter()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:"):].split("|")
        try:
            own = int(parts[0])
        except ValueError:
            continue
        name = parts[2].strip()
        group = next((g for g in IMPORT_GROUPS if name == g or name.startswith(g + ".")), "other")
        sums[group] += own
    out = {g: round(sums[g] / 1e6, 3) for g in (*IMPORT_GROUPS, "other")}
    out["total"] = round(sum(sums.values()) / 1e6, 3)
    return out


def timed_process(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    """Run ``cmd``: wall seconds and the child's CPU seconds (user + system, all its threads: far less sensitive
    than wall time to other jobs on a shared machine)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, text=True)
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=n, f=f: out.__setitem__(n, f.read()), daemon=True)
               for n, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in readers:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    for t in readers:
        t.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out['stderr'][-3000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), **out}


def run_headstart(path: str, train: Path, home: Path, out: Path, importtime: bool = False,
                  threads: int = 1) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    env = {**child_env(threads, home), "TOKENIZERS_PARALLELISM": "false"}
    load = loadavg()
    got = timed_process(finetune_cmd(path, train, out, importtime), env)
    summary = json.loads(got["stdout"])
    manifest = json.loads((out / "manifest.json").read_text())
    api = float(manifest["training"]["seconds"])
    info = summary["info"]
    row = {"wall_s": got["wall_s"], "cpu_s": got["cpu_s"], "api_s": round(api, 3), "startup_s": round(got["wall_s"] - api, 3),
           "body_cache_s": info.get("cache_seconds"), "finetuner_s": info.get("seconds"),
           "accuracy_cv": summary["finetuned"]["accuracy"], "best_epoch": summary["best_epoch"],
           "backbone": summary["backbone"]["name"], "body": info.get("engine", "torch"),
           "precision": info.get("precision"), "load_before": load,
           "load_after": loadavg()}
    if importtime:
        row["imports_s"] = import_seconds(got["stderr"])
    return row


def run_setfit(train: Path, threads: int = 1) -> dict[str, Any]:
    from bench_fewshot import minilm_dir, setfit_python

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "BENCH_TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    load = loadavg()
    cmd = [str(setfit_python()), str(Path(__file__).parent / "_setfit_run.py"), minilm_dir(), str(train),
           str(train), "0"]
    done = timed_process(cmd, env, cwd=train.parent)  # SetFit's Trainer writes checkpoints/ into its cwd
    got = json.loads(done["stdout"].strip().splitlines()[-1])
    return {"wall_s": done["wall_s"], "cpu_s": done["cpu_s"], "train_s": round(got["train_seconds"], 3),
            "load_before": load, "load_after": loadavg()}


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="fortunes-short,debian6")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="which sample of k items per class (_fewshot_data.sample)")
    p.add_argument("--repeats", type=int, default=2, help="runs per code path and task (alternating)")
    p.add_argument("--threads", default="1", help="comma-separated thread counts, each a round of its own [1]")
    p.add_argument("--paths", default="torch,after", help="code paths to run: before, torch, after [torch,after]")
    p.add_argument("--no-setfit", action="store_true")
    p.add_argument("--out", default="fewshot_cli")
    args = p.parse_args(argv)
    info = machine()
    # bytecode compiled once, as a regular (non-editable) pip install does and as SetFit's venv has it: an editable
    # install under PYTHONDONTWRITEBYTECODE (this sandbox's default) would compile every module on every start
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "engine"), str(ROOT / "plugins")],
                   check=True, stdout=subprocess.DEVNULL)
    base = RUNS / "homes" / "base"
    tasks = args.tasks.split(",")
    data = {}
    for task in tasks:
        train_rows, _ = sample(task, args.k, args.seed, 50)
        data[task] = write_labelled_csv(train_rows, RUNS / task / "train.csv")
    # first run: an empty home (base export + parity gate, patch plan, then the fine-tune); later runs share both
    shutil.rmtree(base, ignore_errors=True)
    first = run_headstart("after", data[tasks[0]], base, RUNS / tasks[0] / "first")
    exports = list((base / "exports").glob("minilm*/*/manifest.json"))
    first["base_export_s"] = json.loads(exports[0].read_text()).get("export_seconds") if exports else None
    print(json.dumps({"first_run": first}), flush=True)
    rows: list[dict[str, Any]] = []
    thread_counts = [int(t) for t in args.threads.split(",")]
    paths = [p for p in ("before", "torch", "after") if p in args.paths.split(",")]
    for threads, task in ((t, task) for t in thread_counts for task in tasks):
        for rep in range(args.repeats + 1):  # the last round runs under -X importtime (import phases only)
            order = (["setfit"] if rep < args.repeats and not args.no_setfit else []) + paths
            for path in (order[::-1] if rep % 2 else order):
                if path == "setfit":  # SetFit's run alternates with ours too (first, then last)
                    row = {"task": task, "k": args.k, "classes": len(TASKS[task]), "threads": threads,
                           "path": "setfit", "repeat": rep, **run_setfit(data[task], threads)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                importtime = rep == args.repeats
                home = fresh_home(base, f"{task}-{path}-{rep}")
                row = {"task": task, "k": args.k, "classes": len(TASKS[task]), "threads": threads, "path": path,
                       "repeat": rep, "importtime": importtime,
                       **run_headstart(path, data[task], home, RUNS / task / f"{path}-{rep}", importtime, threads)}
                rows.append(row)
                shutil.rmtree(home, ignore_errors=True)
                print(json.dumps(row), flush=True)
    cells = []
    for threads, task in ((t, task) for t in thread_counts for task in tasks):
        ours = [r for r in rows if r["task"] == task and r["threads"] == threads]
        timed = {path: [r for r in ours if r["path"] == path and not r.get("importtime")] for path in paths}
        imports = {path: next((r["imports_s"] for r in ours if r["path"] == path and r.get("importtime")), {})
                   for path in paths}
        setfits = [r for r in ours if r["path"] == "setfit"]
        setfit = {key: med(setfits, key) for key in ("wall_s", "cpu_s", "train_s")} if setfits else None
        for path in paths:
            cell = {"task": task, "classes": len(TASKS[task]), "k": args.k, "threads": threads, "path": path,
                    "runs": len(timed[path]), "body": next((r.get("body") for r in timed[path]), None),
                    "precision": next((r.get("precision") for r in timed[path]), None),
                    **{key: med(timed[path], key) for key in ("wall_s", "cpu_s", "api_s", "startup_s",
                                                              "body_cache_s", "finetuner_s")},
                    "best_epoch": med(timed[path], "best_epoch"),  # 0: the frozen body kept, no tuned export
                    "imports_s": imports[path].get("total"), "import_torch_dynamo_s": imports[path].get("torch._dynamo"),
                    "import_transformers_s": imports[path].get("transformers"),
                    "import_torch_s": imports[path].get("torch")}
            if setfit:
                cell["setfit_wall_s"], cell["setfit_train_s"] = setfit["wall_s"], setfit["train_s"]
                cell["setfit_cpu_s"] = setfit["cpu_s"]
                cell["vs_setfit_wall"] = round(cell["wall_s"] / setfit["wall_s"], 3)
                cell["setfit_runs"] = len(setfits)
                cell["vs_setfit_train"] = round(cell["wall_s"] / setfit["train_s"], 3)
                cell["api_vs_setfit_train"] = round(cell["api_s"] / setfit["train_s"], 3)
                cell["vs_setfit_cpu"] = round(cell["cpu_s"] / setfit["cpu_s"], 3)
            cells.append(cell)
    payload = {"benchmark": "fewshot_cli", "machine": {**info, "loadavg_end": loadavg()}, "k": args.k, "seed": args.seed,
               "repeats": args.repeats, "threads": thread_counts, "tasks": {t: list(TASKS[t]) for t in tasks},
               "first_run": first, "cells": cells, "rows": rows}
    path = save(args.out, payload)
    columns = ["task", "classes", "threads", "path", "body", "precision", "runs", "best_epoch", "wall_s", "cpu_s", "api_s",
               "startup_s", "body_cache_s", "finetuner_s", "imports_s", "import_torch_s", "import_transformers_s",
               "import_torch_dynamo_s", "setfit_runs", "setfit_wall_s", "setfit_cpu_s", "setfit_train_s",
               "vs_setfit_wall", "vs_setfit_train", "api_vs_setfit_train", "vs_setfit_cpu"]
    print(table(cells, columns))
    print(f"first run (empty home: base export {first.get('base_export_s')} s + plan + fine-tune): "
          f"wall {first['wall_s']} s; load {info['loadavg_start']} -> {loadavg()}; wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
