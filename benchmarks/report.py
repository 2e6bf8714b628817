"""Regenerate every performance figure in the docs from the committed results in ``benchmarks/results/``.

    python benchmarks/report.py            # rewrite the generated blocks in README.md, docs/*.md, benchmarks/README.md
    python benchmarks/report.py --check    # exit 1 (and list the files) if any block differs from the results

A generated block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; NAME picks the
renderer below. Text outside the blocks is never touched. tests/test_docs.py runs the check, so the docs
and the committed results cannot disagree; it also refuses performance figures outside the blocks.
Only the standard library is used (no benchmark needs to run, nothing heavy is imported).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def doc_files(root: Path = ROOT) -> list[Path]:
    """The files whose generated blocks (and figures) are checked."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "benchmarks" / "README.md"]


def load(name: str, results: Path = RESULTS) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _n(x: float, digits: int = 1) -> str:
    """A figure as the docs print it: thousands separated, ``digits`` decimals (none for whole numbers >= 100)."""
    if isinstance(x, int) or (abs(x) >= 100 and digits <= 1):
        return f"{round(x):,}"
    return f"{x:,.{digits}f}"


#: where benchmarks/results/ is, relative to each file with blocks
BASES = {"README.md": "benchmarks/results/", "docs": "../benchmarks/results/", "benchmarks": "results/"}


def _source(name: str, r: dict[str, Any], base: str = BASES["README.md"]) -> str:
    return f"[`{name}.json`]({base}{name}.json) ({r['machine']['date'][:10]})"


def _missing(name: str, command: str) -> str:
    return f"_Not measured yet: no `benchmarks/results/{name}.json`. Run `{command}`._\n"


def _best(r: dict[str, Any], engine: str) -> dict[str, Any]:
    return next(b for b in r["best"] if b["name"] == engine)


# -- renderers: results -> markdown ---------------------------------------------------------------------


def readme_performance(results: Path, base: str) -> str:
    """The README's "How fast" table: one row per headline, each with the file it comes from."""
    rows = []
    text, images, warm, rss, heads = (load(n, results) for n in ("text", "images", "warm", "rss", "heads"))
    if text:
        st, fp, i8, sti8 = (_best(text, e) for e in ("st-torch", "headstart-fp32", "headstart-int8", "st-onnx-int8"))
        rows.append((f"{text['texts']:,} mixed sentences, MiniLM, fp32",
                     f"{_n(fp['items_per_s'])} texts/s (batch {fp['batch_size']})",
                     f"{fp['vs_st-torch']}× `SentenceTransformer.encode` (torch, its best batch: {st['batch_size']}), "
                     f"min cosine {fp['min_cos']:.4f}", _source("text", text, base)))
        rows.append(("same, int8", f"{_n(i8['items_per_s'])} texts/s (batch {i8['batch_size']})",
                     f"{i8['vs_st-torch']}× ST torch, {i8['vs_st-onnx-int8']}× ST's own int8 ONNX (batch "
                     f"{sti8['batch_size']}); min cosine {i8['min_cos']:.4f} to ST torch", _source("text", text, base)))
    if images:
        fp, i8 = _best(images, "headstart-fp32"), next((b for b in images["best"] if b["name"] == "headstart-int8"), None)
        figures = f"{_n(fp['items_per_s'])}" + (f" / {_n(i8['items_per_s'])}" if i8 else "")
        ratios = f"{fp['vs_best_torch']}×" + (f" / {i8['vs_best_torch']}×" if i8 else "")
        cos = f"; int8 min cosine {i8['min_cos']:.4f} (calibrated on {images['calibration']['images']} other JPEGs)" if i8 else ""
        rows.append((f"{images['images']:,} JPEGs of mixed sizes, EfficientNet-Lite0, fp32" + (" / int8" if i8 else ""),
                     f"{figures} images/s",
                     f"{ratios} the fastest PyTorch eager loop measured (`{images['baseline']}`; tried: a plain "
                     f"loop and a DataLoader with the same {images['workers']} decode workers, at every batch "
                     f"size){cos}",
                     _source("images", images, base)))
    if warm:
        rows.append((f"re-running `headstart embed` on {warm['items']:,} embedded texts",
                     f"{warm['warm']['wall_s']:.2f} s",
                     f"{warm['ratio_wall']}× faster than the first run (whole process); no model loaded: "
                     f"session_created={str(warm['warm_session_created']).lower()}", _source("warm", warm, base)))
    if rss:
        first, last = rss["runs"][0], rss["runs"][-1]
        rows.append((f"peak memory embedding {last['texts']:,} short texts",
                     f"{_n(last['peak_rss_mb'])} MB",
                     f"{rss['growth_pct']:+.1f} % from {first['texts']:,} texts ({_n(first['peak_rss_mb'])} MB); "
                     f"slope {rss['slope_mb_per_1k_items']:.2f} MB per 1,000 items", _source("rss", rss, base)))
    for d in heads["datasets"] if heads else []:
        ours, sk = d["rows"][0], d["rows"][2]
        if d["sklearn_reached"]:
            x = d["linear_speedup_same_objective"]
            pace = f"{x}× faster than" if x >= 1 else f"{round(1 / x, 1)}× slower than"
            against = (f"{pace} scikit-learn `LogisticRegression` at the same C, timed to the same objective "
                       f"({sk['fit_s']:.2f} s, n_iter {sk['n_iter']})")
        else:
            against = (f"scikit-learn `LogisticRegression` at the same C never reached its objective "
                       f"({sk['fit_s']:.2f} s, n_iter {sk['n_iter']})")
        rows.append((f"linear head, {d['name']}", f"{ours['fit_s']:.2f} s fit incl. choosing L2, accuracy "
                     f"{ours['accuracy']:.4f}", against, _source("heads", heads, base)))
    predict, fewshot = load("predict", results), load("fewshot", results)
    if predict and "text" in predict:
        runs = sorted(predict["text"]["runs"], key=lambda r: r["threads"])
        threads = " / ".join(str(r["threads"]) for r in runs)
        fp, i8 = (" / ".join(f"{r['rows'][row]['p50_ms']:.2f}" for r in runs) for row in (0, 2))
        fp_x, i8_x = (" / ".join(f"{r[key]}×" for r in runs) for key in ("p50_ratio", "p50_ratio_int8_vs_int8"))
        rows.append((f"one text through `headstart bundle`'s ONNX file, p50 at {threads} thread(s)",
                     f"fp32 {fp} ms; int8 {i8} ms",
                     f"fp32 {fp_x} `SentenceTransformer.encode` + `LogisticRegression`; int8 {i8_x} "
                     "sentence-transformers with torch's int8", _source("predict", predict, base)))
    if fewshot:
        cells = [c for c in fewshot["cells"] if c["method"] == "contrastive" and "vs_setfit_accuracy_pts" in c]
        if cells:
            pts = [c["vs_setfit_accuracy_pts"] for c in cells]
            times = [c["vs_setfit_time_ratio"] for c in cells]
            sizes = sorted({c["k"] for c in cells})
            setfit = {(c["task"], c["k"]): c for c in fewshot["cells"] if c["method"] == "setfit"}
            paired = [len(set(c["seed_list"]) & set(setfit[c["task"], c["k"]]["seed_list"])) for c in cells]
            rows.append((f"few labels: `headstart finetune --objective contrastive`, {len(fewshot['tasks'])} text sets "
                         f"at {sizes[0]}-{sizes[-1]} labels per class, {_span(paired)} seeds (both methods)",
                         f"{len(cells)} cells: mean accuracy {min(pts):+.1f} to {max(pts):+.1f} pts from SetFit's",
                         f"{min(times):.2f}-{max(times):.2f}× SetFit 1.2's train time (same MiniLM)",
                         _source("fewshot", fewshot, base)))
    if not rows:
        return _missing("text", "python benchmarks/bench_embed.py")
    lines = ["| job | headstart | against | result |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    loaded = [x for x in (text, images, warm, rss, heads, predict, fewshot) if x]
    facts = _machine_line({"machine": {**loaded[0]["machine"], "notes": ""}})
    notes = dict.fromkeys(x["machine"]["notes"].rstrip(".") for x in loaded if x["machine"].get("notes"))
    said = (" Notes: " + " ".join(f"{n}." for n in notes)) if notes else ""
    return "\n".join(lines) + "\n\n" + facts + said + "\n"


def _machine_line(r: dict[str, Any]) -> str:
    m = r["machine"]
    note = f" Notes: {m['notes'].rstrip('.')}." if m.get("notes") else ""
    return f"Measured on {m['cpu_model']}, {m['cpus']} cores, {m['date'][:10]}.{note}"


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, list):
            return "; ".join(map(str, v))
        return str(v).replace("|", "\\|")

    lines = ["", "| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for _, k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def embed_text(results: Path, base: str) -> str:
    r = load("text", results)
    if not r:
        return _missing("text", "python benchmarks/bench_embed.py text")
    out = [f"`{r['machine']['command']}` — {r['texts']:,} texts, {r['threads']} threads, every engine at batch sizes "
           f"{', '.join(map(str, r['batch_sizes']))} (fastest of {r['repeat']} run(s) each); "
           f"{_source('text', r, base)}:\n",
           _table(r["best"], [("best batch of each", "name"), ("batch", "batch_size"), ("texts/s", "items_per_s"),
                              ("vs ST torch", "vs_st-torch"), ("vs ST int8", "vs_st-onnx-int8"),
                              ("min cosine vs ST torch", "min_cos")]),
           "\nEvery run:\n",
           _table(r["rows"], [("engine, batch", "name"), ("texts/s", "items_per_s"), ("min cosine", "min_cos")]),
           "\n" + _machine_line(r) + "\n"]
    p = load("text_process", results)
    if p:
        out += [f"\n`{p['machine']['command']}` — whole processes, {p['texts']:,} texts from CSV, each engine at its "
                f"best batch above; {_source('text_process', p, base)}:\n",
                _table(p["rows"], [("process", "name"), ("batch", "batch_size"), ("wall s", "wall_s"),
                                   ("vs ST torch", "vs_st-torch"), ("vs ST int8", "vs_st-onnx-int8"),
                                   ("peak RSS MB", "peak_rss_mb")])]
    return "".join(out)


def embed_images(results: Path, base: str) -> str:
    r = load("images", results)
    if not r:
        return _missing("images", "python benchmarks/bench_embed.py images")
    return "".join([
        f"`{r['machine']['command']}` — {r['images']:,} JPEGs, {r['threads']} threads, {r['workers']} decode workers for "
        f"both the DataLoader and headstart, batch sizes {', '.join(map(str, r['batch_sizes']))}; int8 calibrated on "
        f"{r['calibration']['images']} JPEGs disjoint from the measured ones; min cosine against `{r['baseline']}`; "
        f"{_source('images', r, base)}:\n",
        _table(r["best"], [("best batch of each", "name"), ("batch", "batch_size"), ("workers", "workers"),
                           ("images/s", "items_per_s"), ("vs fastest torch", "vs_best_torch"),
                           ("vs DataLoader", "vs_dataloader"), ("vs plain loop", "vs_loop"), ("min cosine", "min_cos")]),
        "\nEvery run:\n",
        _table(r["rows"], [("engine, batch", "name"), ("images/s", "items_per_s"), ("min cosine", "min_cos")]),
        "\n" + _machine_line(r) + "\n"])


def embed_warm_rss(results: Path, base: str) -> str:
    out = []
    w = load("warm", results)
    if w:
        out.append(f"`{w['machine']['command']}` — {w['items']:,} texts: cold {w['cold']['wall_s']:.2f} s, warm "
                   f"{w['warm']['wall_s']:.2f} s wall ({w['ratio_wall']}×); inside `embed()` "
                   f"{w['cold']['seconds']['total']:.2f} s vs {w['warm']['seconds']['total']:.3f} s "
                   f"({w['ratio_embed_total']}×); the warm run creates no onnxruntime session: "
                   f"{str(not w['warm_session_created']).lower()}; {_source('warm', w, base)}.\n")
    else:
        out.append(_missing("warm", "python benchmarks/bench_embed.py warm"))
    s = load("rss", results)
    if s:
        runs = ", ".join(f"{x['texts']:,}: {_n(x['peak_rss_mb'])} MB" for x in s["runs"])
        out.append(f"\n`{s['machine']['command']}` — peak RSS of `headstart embed` ({s['precision']}) by short texts: "
                   f"{runs}; {s['growth_pct']:+.1f} % from the smallest to the largest, least-squares slope "
                   f"{s['slope_mb_per_1k_items']:.2f} MB per 1,000 items; {_source('rss', s, base)}.\n")
    else:
        out.append("\n" + _missing("rss", "python benchmarks/bench_embed.py rss"))
    return "".join(out)


def heads(results: Path, base: str) -> str:
    r = load("heads", results)
    if not r:
        return _missing("heads", "python benchmarks/bench_heads.py")
    out = [f"`{r['machine']['command']}` — {r['threads']} threads; {_source('heads', r, base)}:\n"]
    for d in r["datasets"]:
        out.append(f"\n{d['name']}, L2 chosen on validation = {d['l2']:.3g} (C = {d['C']:.4g}); target objective "
                   f"{d['target_objective']:.6f}:\n")
        rows = [{**r, "objective": f"{r['objective']:.8f}" if "objective" in r else None,
                 "reached": {True: "yes", False: "no"}.get(r.get("reached"))} for r in d["rows"]]
        out.append(_table(rows, [("fit", "model"), ("fit s", "fit_s"), ("n_iter", "n_iter"),
                                 ("objective", "objective"), ("reached the target", "reached"),
                                 ("accuracy", "accuracy"), ("warnings", "warnings")]))
        for row in d.get("mlp_rows", []):
            out.append(f"\n{row['model']}: {row['fit_s']:.2f} s, accuracy {row['accuracy']:.4f}")
    out.append("\n" + _machine_line(r) + "\n")
    return "".join(out)


def finetune(results: Path, base: str) -> str:
    r = load("finetune", results)
    if not r:
        return _missing("finetune", "python benchmarks/bench_finetune.py")
    rows = r.get("rows", [])
    return (f"`{r['machine']['command']}` — {_source('finetune', r, base)}:\n"
            + _table(rows, [("model", "model"), ("held-out accuracy", "test_accuracy"),
                            ("validation accuracy", "val_accuracy"), ("seconds", "seconds")])
            + "\n" + _machine_line(r) + "\n")


def _span(values: Any) -> str:
    """``5`` or ``3-5``: the range of some counts."""
    values = sorted(set(values))
    return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"


def fewshot(results: Path, base: str, name: str = "fewshot") -> str:
    r = load(name, results)
    if not r:
        return _missing(name, "python benchmarks/bench_fewshot.py")
    rows = []
    for c in r["cells"]:
        rows.append({**c, "accuracy": f"{c['accuracy_mean']:.3f} ± {c['accuracy_sd']:.3f}",
                     "seeds": f"{c['seeds']}" + (f" ({c['setfit_cached_seeds']} from the SetFit cache)"
                                                 if c.get("setfit_cached_seeds") else ""),
                     "seconds": _n(c["seconds_mean"]) + (f" ± {_n(c['seconds_sd'])}" if c.get("seconds_sd") else ""),
                     "vs": (f"{c['vs_setfit_accuracy_pts']:+.1f} pts, {c['vs_setfit_time_ratio']:.2f}× the time"
                            if "vs_setfit_accuracy_pts" in c else "")})
    tasks = "; ".join(f"`{t}`: {', '.join(labels)}" for t, labels in r["tasks"].items())
    return (f"`{r['machine']['command']}` — {_source(name, r, base)}; test items per class: "
            f"{r['test_per_class']}; torch threads per method: {r.get('torch_threads', '?')}; sections: {tasks}.\n"
            + _table(rows, [("task", "task"), ("k / class", "k"), ("method", "method"), ("seeds", "seeds"),
                            ("test accuracy (mean ± sd)", "accuracy"), ("train s (mean ± sd)", "seconds"),
                            ("vs SetFit, same seeds", "vs")])
            + "\n" + _machine_line(r) + "\n")


def fewshot_cost(results: Path, base: str) -> str:
    r = load("fewshot_cost", results)
    if not r:
        return _missing("fewshot_cost", "python benchmarks/bench_fewshot_cost.py")
    rows = [{**row, "old": _n(row["old_s"], 3), "new": _n(row["new_s"], 3)} for row in r["rows"]]
    return (f"`{r['machine']['command']}` — {_source('fewshot_cost', r, base)}; median of {r['repeats']} "
            "alternating old/new runs:\n" + _table(rows, [("step", "step"), ("old s", "old"), ("new s", "new")])
            + "\n" + _machine_line(r) + "\n")


def fewshot_cli(results: Path, base: str, name: str = "fewshot_cli") -> str:
    r = load(name, results)
    if not r:
        return _missing(name, "python benchmarks/bench_fewshot_cli.py")
    rows = [{**c, "task": f"{c['task']} ({c['classes']} classes × {c['k']})", "threads": c.get("threads", 1)}
            for c in r["cells"]]
    first = r["first_run"]
    threads = r["threads"] if isinstance(r["threads"], list) else [r["threads"]]
    return (f"`{r['machine']['command']}` — {_source(name, r, base)}; fresh processes at "
            f"{' and '.join(map(str, threads))} thread(s) (SetFit too), medians of "
            f"{r['repeats']} alternating runs per path, SetFit's among them (imports: one extra run under "
            f"`-X importtime`):\n"
            + _table(rows, [("task", "task"), ("threads", "threads"), ("path", "path"), ("body", "body"),
                            ("training precision", "precision"), ("epochs chosen", "best_epoch"), ("wall s", "wall_s"),
                            ("CPU s", "cpu_s"),
                            ("fine-tune call s", "api_s"), ("outside the call s", "startup_s"),
                            ("body + cache s", "body_cache_s"), ("imports s", "imports_s"), ("of which torch", "import_torch_s"),
                            ("of which transformers", "import_transformers_s"),
                            ("of which torch._dynamo", "import_torch_dynamo_s"), ("SetFit wall s", "setfit_wall_s"),
                            ("SetFit train s", "setfit_train_s"), ("SetFit runs", "setfit_runs"),
                            ("wall / SetFit wall", "vs_setfit_wall"), ("wall / SetFit train", "vs_setfit_train"),
                            ("call / SetFit train", "api_vs_setfit_train"), ("CPU / SetFit CPU", "vs_setfit_cpu")])
            + f"\nFirst run in an empty home (base MiniLM export {first.get('base_export_s')} s with its parity gate, "
              f"the patch plan, then the fine-tune): {first['wall_s']} s wall.\n\n" + _machine_line(r) + "\n")


def ray(results: Path, base: str, name: str = "bench_ray") -> str:
    r = load(name, results)
    if not r:
        return _missing(name, "python benchmarks/bench_ray.py")
    columns = [("engine", "engine"), ("workers", "workers"), ("items", "items"), ("job s", "job_s"),
               ("items/s", "items_per_s"), ("driver peak RSS MB", "driver_peak_rss_mb")]
    out = f"`{r['machine']['command']}` — {_source(name, r, base)}:\n"
    if r.get("tiny"):
        out += ("\nTiny `onnx:` backbone (MatMul 16→384 + L2 norm; the engine's own cost), "
                f"{r['tiny'][0]['items']:,} items:\n"
                + _table(r["tiny"], columns + [("× local", "vs_local"), ("shards", "shards")]))
    minilm_runs = [(r.get("threads_per_worker", 1), r.get("minilm"))]
    if r.get("minilm_more"):
        minilm_runs.append((r["minilm_more"]["threads_per_worker"], r["minilm_more"]["rows"]))
    for threads, rows in minilm_runs:
        if rows:
            out += (f"\nMiniLM, {rows[0]['items']:,} texts, {threads} onnxruntime thread(s) per worker:\n"
                    + _table(rows, columns + [("× one worker", "vs_one_worker")]))
    return out + "\n" + _machine_line(r) + "\n"


def ray_device(results: Path, base: str) -> str:
    """The same benchmark on the lent device machine's 16 CPU cores (its GPU unused)."""
    return ray(results, base, "bench_ray_device")


def gpu_embed(results: Path, base: str) -> str:
    r = load("gpu_embed", results)
    if not r:
        return _missing("gpu_embed", "python benchmarks/gpu_embed.py (on a GPU machine)")
    rows = []
    for run in r["runs"]:
        for row in run["rows"]:
            rows.append({"name": row["name"], "batch": row.get("batch_size") or "default",
                         "rate": _n(row["items_per_s"], 0), "ratio": row.get("vs_sentence_transformers"),
                         "cos": row.get("min_cos"), "providers": ", ".join(row.get("providers") or [])})
    return (f"`python benchmarks/gpu_embed.py --texts {r['runs'][0]['texts']} [--batch-size 1024 --st-batch-size 1024]`"
            f" — {_source('gpu_embed', r, base)}; end to end from a CSV into an empty store (headstart) vs "
            "`SentenceTransformer.half().encode` on the same texts:\n"
            + _table(rows, [("engine", "name"), ("batch", "batch"), ("texts/s", "rate"),
                            ("× sentence-transformers", "ratio"), ("min cosine", "cos"), ("providers", "providers")])
            + "\n" + _machine_line(r) + "\n")


def _gpu_rate(results: Path) -> tuple[float, str]:
    """items/s of one GPU worker for the paper: measured (gpu_embed.json) when there, else an assumption."""
    r = load("gpu_embed", results)
    rates = [row["items_per_s"] for run in (r or {}).get("runs", []) for row in run["rows"]
             if row["name"].startswith("headstart")]
    if rates:
        return max(rates), (f"{max(rates):,.0f} MiniLM texts/s per GPU worker, as headstart fp16 measured end to end "
                            "on one H200 (gpu_embed.json)")
    return PAPER_GPU_RATE, f"{PAPER_GPU_RATE:,} items/s per GPU worker (an assumption, not measured)"


PAPER_ITEMS = 100_000_000
PAPER_SHARD_ROWS = 4096
PAPER_GPU_RATE = 20_000  # items/s per GPU worker: an assumption (no GPU measured here), stated in the block
PAPER_CLUSTERS = ((1, 1), (4, 4), (16, 8), (64, 8))  # (nodes, GPUs per node)


def ray_paper(results: Path, base: str) -> str:
    """100M items on N nodes with M GPUs, from the measured shard, manifest and commit costs of bench_ray
    (the device machine's quiet run when there is one, else this machine's)."""
    name = "bench_ray_device" if load("bench_ray_device", results) else "bench_ray"
    r = load(name, results)
    if not r or not r.get("tiny"):
        return _missing("bench_ray", "python benchmarks/bench_ray.py --parts tiny")
    run = next(x for x in r["tiny"] if x["engine"] == "ray")
    shards = max(1, int(run["shards"]))
    commits = max(1, int(run.get("commits") or shards))
    entry_bytes = run["manifest_bytes"] / shards
    commit_s = run["driver_commit_s"] / commits
    rows_per_commit = run["items"] / commits
    n_shards = -(-PAPER_ITEMS // PAPER_SHARD_ROWS)
    driver_cap = rows_per_commit / commit_s if commit_s else float("inf")
    rows = []
    gpu_rate, gpu_says = _gpu_rate(results)
    for nodes, gpus in PAPER_CLUSTERS:
        rate = round(nodes * gpus * gpu_rate)
        per_s = rate / rows_per_commit
        effective = min(rate, driver_cap)
        rows.append({"cluster": f"{nodes} × {gpus} GPU", "rate": f"{rate:,}", "commits": round(per_s, 2),
                     "busy": f"{per_s * commit_s:.0%}", "minutes": round(PAPER_ITEMS / effective / 60, 1),
                     "write": round(effective * 384 * 4 / 1e9, 2),
                     "bound": "driver commits" if rate > driver_cap else "GPUs"})
    minilm = r.get("minilm") or []
    cpu_line = ""
    if minilm:
        one = minilm[0]
        cpu_line = (f"* One CPU worker (1 onnxruntime thread) embedded {one['items_per_s']:,} MiniLM texts/s here; "
                    f"100M texts on CPU workers alone would need "
                    f"{PAPER_ITEMS / one['items_per_s'] / 3600:,.0f} worker-hours.\n")
    return (f"From {_source(name, r, base)} (`{r['machine']['command']}`), Ray run at "
            f"{run['items']:,} items with {run['workers']} workers:\n\n"
            f"* Shards: {PAPER_ITEMS:,} items / {PAPER_SHARD_ROWS:,} per shard = **{n_shards:,} vector shards** "
            f"({shards} here).\n"
            f"* Manifest: {entry_bytes:,.0f} bytes per shard entry here → **{n_shards * entry_bytes / 2**20:,.1f} MiB** "
            f"if it were one JSON document at {n_shards:,} shards; the store writes it as a checkpoint plus an "
            "append-only commit log (one line per commit, folded every 1,000 lines), so a commit's cost stays flat "
            "(docs/store.md measures 2,442 commits at 10M items).\n"
            f"* Commits: {commits} here (one per split of ~{rows_per_commit:,.0f} items, ~{shards / commits:,.0f} "
            f"shards), {commit_s * 1e3:,.1f} ms each on the driver (log line + key index + fsyncs; "
            f"{run['driver_commit_s']} s in all) → **{PAPER_ITEMS / rows_per_commit:,.0f} commits** for 100M "
            f"at this split size, and one driver commits at most **{driver_cap:,.0f} items/s** at this manifest "
            "cost (more as splits grow).\n"
            f"* Driver memory: peak RSS **{run['driver_peak_rss_mb']} MB** at {run['items']:,} items; its state is "
            "the list of splits and counters (flat in the item count, tested in tests/test_ray_scale.py).\n"
            + cpu_line
            + f"\nGPU clusters, at {gpu_says}:\n"
            + _table(rows, [("nodes × GPUs", "cluster"), ("items/s offered", "rate"), ("commits/s", "commits"),
                            ("driver commit load", "busy"), ("minutes for 100M", "minutes"),
                            ("vector writes GB/s", "write"), ("bound", "bound")])
            + "\n" + _machine_line(r) + "\n")


def integrity(results: Path, base: str) -> str:
    r = load("integrity", results)
    if not r:
        return _missing("integrity", "python benchmarks/bench_integrity.py")
    rows = [{**row, "off": f"{_n(row['wall_off_s'], 2)} s wall, {_n(row['cpu_off_s'], 3)} s CPU",
             "on": f"{_n(row['wall_on_s'], 2)} s wall, {_n(row['cpu_on_s'], 3)} s CPU",
             "overhead": f"{row['wall_overhead_pct']:+.1f} % wall, {row['cpu_overhead_pct']:+.1f} % CPU"}
            for row in r["side_by_side"]]
    return (f"`{r['machine']['command']}` — {_source('integrity', r, base)}:\n"
            + _table(rows, [("case", "case"), ("checks off", "off"), ("checks on", "on"), ("overhead", "overhead")])
            + "\n" + _machine_line(r) + "\n")


def quality(results: Path, base: str) -> str:
    r = load("quality", results)
    if not r:
        return _missing("quality", "python benchmarks/bench_quality.py")
    out = [f"`{r['machine']['command']}` — {_source('quality', r, base)}; old = the linear head of commit "
           f"{r['old_commit']}:\n"]
    for d in r["datasets"]:
        out.append(f"\n{d['name']} ({d['backbone']}, {d['classes']} classes, {d['n_train']} train / {d['n_test']} test):\n")
        out.append(_table(d["rows"], [("model", "model"), ("test accuracy", "accuracy"), ("test log-loss", "log_loss"),
                                      ("ECE", "ece"), ("temperature", "temperature")]))
    s = r.get("summary")
    if s:
        out.append(f"\nMean test accuracy: old {s['mean_accuracy_old']:.4f}, new {s['mean_accuracy_new']:.4f}, "
                   f"sklearn defaults {s['mean_accuracy_sklearn_defaults']:.4f}; worst new − sklearn: "
                   f"{s['worst_new_minus_sklearn_pt']:+.2f} pt.\n")
    out.append("\n" + _machine_line(r) + "\n")
    return "".join(out)


def sequences(results: Path, base: str) -> str:
    r = load("sequences", results)
    if not r:
        return _missing("sequences", "python benchmarks/bench_sequences.py")
    d, pre = r["data"], r["pretrain"]
    pick = pre["pretrained"]
    hidden = ", ".join(f"{c['hidden']}: {c['best_val_loss']:.4f}" for c in r.get("hidden_candidates", []))
    out = [f"`{r['machine']['command']}` — {_source('sequences', r, base)}. Held-out PR-AUC (average precision) on "
           f"{d['test_accounts']:,} test accounts ({d['test_frauds']} frauds), mean ± sd over the labelled subsets "
           f"(min–max in brackets; {r['seeds']} subsets at the smallest count, {r.get('seeds_large', r['seeds'])} at "
           f"the others, the same subsets for every method). Encoder pretrained on {d['pool_accounts']:,} unlabelled "
           f"accounts in {_n(pick['seconds'])} s (GRU size {pick['hidden']}, best epoch {pick['best_epoch']}"
           + (f"; best validation loss per size: {hidden}" if hidden else "") + ")"
           + (f"; on the first {d['small_pool_accounts']:,} pool accounts in {_n(pre['small-pool']['seconds'])} s "
              f"(best epoch {pre['small-pool']['best_epoch']})" if "small-pool" in pre else "")
           + (f"; the contrastive one in {_n(pre['contrastive']['seconds'])} s (best epoch "
              f"{pre['contrastive']['best_epoch']})" if "contrastive" in pre else "") + ":\n"]
    rows = [{"labels": x["labels"], "method": x["method"],
             "PR-AUC": f"{x['pr_auc']:.3f} ± {x.get('pr_auc_sd', 0.0):.3f} ({x['pr_auc_min']:.3f}–{x['pr_auc_max']:.3f})",
             "train s": f"{x['train_s']:.2f}"} for x in r["rows"]]
    out.append(_table(rows, [("labelled accounts", "labels"), ("method", "method"), ("PR-AUC", "PR-AUC"),
                             ("train s", "train s")]))
    if r.get("comparisons"):
        out.append("\nPaired by labelled subset, against the better of the two HistGradientBoosting rows at each "
                   "count (difference in PR-AUC, mean ± standard error; subsets where the method is ahead):\n")
        out.append(_table([{**c, "diff": f"{c['diff_mean']:+.3f} ± {c['diff_se']:.3f}",
                            "wins": f"{c['wins']} of {c['seeds']}"} for c in r["comparisons"]],
                          [("labelled accounts", "labels"), ("method", "method"), ("baseline", "baseline"),
                           ("difference", "diff"), ("ahead", "wins")]))
    if r.get("sweep_picks"):
        from collections import Counter

        out.append("\nHeads the sweep picked: " + "; ".join(
            f"{n} labels: " + ", ".join(f"{h} ×{k}" for h, k in Counter(p).most_common())
            for n, p in r["sweep_picks"].items()) + ".\n")
    if r.get("rss"):
        out.append("\nPeak RSS of `headstart embed` over larger generated tables (one item per account, Parquet "
                   "read in row groups):\n")
        out.append(_table([{**x, "events": f"{x['events']:,}", "items": f"{x['items']:,}",
                            "peak": f"{_n(x['peak_rss_mb'])} MB", "wall": f"{_n(x['wall_s'])} s"}
                           for x in r["rss"]["rows"]],
                          [("events", "events"), ("items", "items"), ("wall", "wall"), ("peak RSS", "peak")]))
    out.append("\n" + _machine_line(r) + "\n")
    return "".join(out)


def _scale_detail(step: dict[str, Any]) -> str | None:
    """The store-only steps' own figures (commit cost, sizes, look-up times), in words."""
    if "commits" in step:
        return (f"{step['commits']:,} commits, {_n(step['first_10pct_ms'])} ms each over the first 10 %, "
                f"{_n(step['last_10pct_ms'])} ms over the last; checkpoint {_n(step['manifest_kb'])} KB; key index "
                f"{_n(step['key_index_mb'])} MB on disk (a Python key table: ~{step['table_mb_before']:,} MB in RAM)")
    if step.get("incomplete"):  # a step stopped before it finished (what it reached, and its peak RSS so far)
        return str(step["incomplete"])
    if step.get("read_passes") is not None:  # train: what it read of the store (training.reads)
        passes = step.get("fit_passes") or {}
        return (f"read {_n(step['read_gb'])} GB of shards = {step['read_passes']} passes over the rows; full-batch "
                f"passes: validation {passes.get('validation')}, refit {passes.get('refit')}"
                + (f"; {step['note']}" if step.get("note") else ""))
    if step.get("note"):
        return str(step["note"])
    if "lookup_cold_s" in step:
        return (f"open {step['open_s']} s; 11,000 look-ups {step['lookup_cold_s']} s cold (hashes the shards hit), "
                f"{step['lookup_warm_s']} s warm; get 10,000 vectors {step['get_s']} s")
    return None


def scale(results: Path, base: str) -> str:
    r = load("scale", results)
    if not r:
        return _missing("scale", "python benchmarks/bench_scale.py")
    rows = []
    for run in sorted(r["runs"], key=lambda run: (run["items"], run["when"])):
        for step in run["steps"]:
            rows.append({"items": f"{run['items']:,}", "run": f"{run['tag']} ({run['when'][:10]})",
                         "step": step["step"], "wall": _n(step["wall_s"]),
                         "rate": _n(step["items_per_s"], 0) if step.get("items_per_s") else None,
                         "rss": _n(step["peak_rss_mb"], 0), "accuracy": step.get("accuracy"),
                         "load": (step.get("loadavg") or [None])[0], "detail": _scale_detail(step)})
    return (f"`python benchmarks/bench_scale.py --items N --tag TAG [--steps ...]` — {_source('scale', r, base)}; "
            f"{r['backbone']}:\n"
            + _table(rows, [("items", "items"), ("run", "run"), ("step", "step"), ("wall s", "wall"),
                            ("items/s", "rate"), ("peak RSS MB", "rss"), ("accuracy", "accuracy"),
                            ("load (1 min) at start", "load"), ("detail", "detail")])
            + "\n" + _machine_line(r) + "\n")


def _load_during(part: dict[str, Any]) -> str:
    load = part.get("loadavg_1min")
    return f" (1-min load average {load[0]} → {load[1]} on the 2 cores)" if load else ""


def _spread(row: dict[str, Any]) -> str:
    spread = row.get("p50_spread_ms")
    return f"{spread[0]}–{spread[1]}" if spread else ""


def _predict_runs(part: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-thread-count runs of a predict.json part (older files: one run at the top level)."""
    return part.get("runs") or [{k: part[k] for k in part if k in ("rows", "loadavg_1min") or k.endswith("ratio")}]


def predict(results: Path, base: str) -> str:
    r = load("predict", results)
    if not r:
        return _missing("predict", "python benchmarks/bench_predict.py")
    threads = r["threads"] if isinstance(r["threads"], list) else [r["threads"]]
    method = (r.get("text") or {}).get("latency_method")
    calls = (f"text: {method['rounds']} rounds of {method['block_calls']} warm single-item calls per engine, the "
             f"engines taking turns block by block, p50 = the median of the rounds' p50s; images: {r['calls']} warm "
             f"single-item calls per engine, taking turns call by call" if method else
             f"{r['calls']} warm single-item calls per engine")
    out = [f"`{r['machine']['command']}` — at {' and '.join(map(str, threads))} thread(s) per engine, {calls}; "
           f"{_source('predict', r, base)}:\n"]
    for name, what in (("text", "texts"), ("images", "images")):
        part = r.get(name)
        if not part:
            continue
        for run in _predict_runs(part):
            at = f", {run['threads']} thread(s)" if "threads" in run else ""
            out += [f"\n{name.capitalize()}{at}: {part['items']} test {what}, batches of {part['batch_size']} over "
                    f"{part['batch_items']} {what}; bundle p50 {run['p50_ratio']}× faster than the baseline, batch "
                    f"throughput {run['throughput_ratio']}× the baseline's, label agreement {part['label_agreement']}"
                    f"{_load_during(run)}:\n",
                    _table([{**row, "spread": _spread(row)} for row in run["rows"]],
                           [("engine", "engine"), ("p50 ms", "p50_ms")]
                           + ([("rounds' p50 min–max ms", "spread")] if "p50_spread_ms" in run["rows"][0] else [])
                           + [("p99 ms", "p99_ms"), (f"{what}/s", "items_per_s")]
                           + ([(f"same-size {what}/s", "same_size_items_per_s")] if "same_size" in part else []))]
            if "p50_ratio_int8_vs_int8" in run:
                out.append(f"\nPrecision against precision: the fp32 bundle's p50 {run['p50_ratio']}× faster than fp32 "
                           f"sentence-transformers; the int8 bundle's {run['p50_ratio_int8_vs_int8']}× faster than "
                           f"sentence-transformers with torch dynamic int8 and {run['p50_ratio_int8']}× faster than "
                           f"fp32 sentence-transformers.")
                if "per_round_ratio_int8_vs_int8" in run:
                    fp, i8 = run["per_round_ratio"], run["per_round_ratio_int8_vs_int8"]
                    engines = ", ".join(f"{e} {v} ms" for e, v in run["sentence_transformers_int8_engines_p50_ms"].items())
                    out.append(f" Round by round (the same load for both) fp32 {fp['min']}–{fp['max']}× (median "
                               f"{fp['median']}), int8 against int8 {i8['min']}–{i8['max']}× (median {i8['median']}). "
                               f"torch's quantised engines for sentence-transformers int8, p50 of one text: {engines}; "
                               f"the fastest, {run['sentence_transformers_int8_engine']}, is compared.")
                if run.get("call_by_call_p50_ms"):
                    out.append(f" Taking turns call by call instead (each engine evicting the others' weights from "
                               f"the caches before every call), p50s were "
                               f"{' / '.join(map(str, run['call_by_call_p50_ms']))} ms in the table's order, int8 "
                               f"against int8 {run['call_by_call_p50_ratio_int8_vs_int8']}×.")
                out.append("\n")
            elif "p50_ratio_int8" in run:
                out.append(f"\nThe int8 bundle: p50 {run['p50_ratio_int8']}× faster than the baseline.\n")
        if "int8_parity" in part:
            gate = (part.get("int8_parity") or {}).get("validation", {})
            out.append(f"\nThe int8 bundle's gate on the validation split: label agreement "
                       f"{gate.get('label_agreement')}, accuracy delta {gate.get('accuracy_delta_pt')} pt on "
                       f"{gate.get('items')} items.\n")
        if part.get("test_accuracy"):
            acc, agree = part["test_accuracy"], part["int8_label_agreement_with_fp32"]
            out.append(f"\nAccuracy on the {part['items']} test texts: bundle {acc['bundle']:.4f}, sentence-transformers "
                       f"{acc['sentence_transformers']:.4f}, int8 bundle {acc['bundle_int8']:.4f}, int8 "
                       f"sentence-transformers {acc['sentence_transformers_int8']:.4f}; int8 labels equal to fp32's: "
                       f"bundle {agree['bundle']:.4f}, sentence-transformers {agree['sentence_transformers']:.4f} (max "
                       f"abs probability difference int8 vs fp32 bundle {part['int8_bundle_max_abs_diff_vs_fp32']:.3g}).\n")
        if part.get("fp32_floor"):
            f = part["fp32_floor"]
            out.append(f"\nThe fp32 floor ({f['threads']} thread): the transformer's {f['matrices']} weight matrices alone "
                       f"({f['weights_mb']} MB fp32, more than this CPU's caches hold, so read from memory on every "
                       f"call), each multiplied once by a {f['tokens']}-token input, take p50 {f['floor_p50_ms']} ms "
                       f"({f['floor_gb_per_s']} GB/s, {f['floor_gflop_per_s']} GFLOP/s), taking turns with the bundle "
                       f"({f['bundle_p50_ms']} ms): against sentence-transformers' {f['sentence_transformers_p50_ms']} ms "
                       f"at that thread count, no fp32 graph on onnxruntime's matrix products can be more than "
                       f"{f['best_possible_p50_ratio']}× faster here; the bundle spends {f['bundle_over_floor_ms']} ms "
                       f"above that floor (attention, layer norms, Gelu, tokenizer, head, the call)."
                       + (f" Merely reading those bytes once (numpy summing them) takes {f['read_p50_ms']} ms "
                          f"({f['read_gb_per_s']} GB/s): an engine whose matrix products overlapped reading "
                          f"with computing completely could not beat {f['read_bound_p50_ratio']}× "
                          f"sentence-transformers' speed."
                          if "read_p50_ms" in f else "") + "\n")
        if part.get("tried"):
            out += ["\nWhat was tried to make the text bundle faster (each taking turns with the bundle it would "
                    "replace, block by block; p50 ratio above 1 = faster; max abs diff against that bundle's "
                    "probabilities, one test text a call):\n",
                    _table(part["tried"], [("variant", "variant"), ("p50 ms", "p50_ms"),
                                           ("shipped p50 ms", "shipped_p50_ms"), ("p50 ratio", "p50_ratio"),
                                           ("max abs diff", "max_abs_diff"), ("share of a call", "share")])]
        if part.get("profile"):
            prof = part["profile"]
            tokens = part.get("single_item_tokens") or {}
            ops = ", ".join(f"{o['op']} {o['ms_per_call']} ms ({round(100 * o['share'])} %)" for o in prof["top_ops"][:5])
            fused = ", ".join(f"{k.split(':')[-1]} ×{v}" for k, v in (part.get("bundle_ops") or {}).items()
                              if k.startswith("com.microsoft:"))
            out.append(f"\nWhere a single-text call of the fp32 bundle goes (onnxruntime's profiler, {prof['threads']} "
                       f"thread, {prof['calls']} calls; kernel time {prof['kernel_ms_per_call']} ms a call): {ops}. "
                       f"Its fused transformer ops: {fused}. Single texts are not padded (input_ids width "
                       f"{tokens.get('min')}–{tokens.get('max')} tokens, {tokens.get('padding_tokens')} padding "
                       f"tokens).")
            if part.get("profile_int8"):
                p8 = part["profile_int8"]
                ops8 = ", ".join(f"{o['op']} {o['ms_per_call']} ms ({round(100 * o['share'])} %)"
                                 for o in p8["top_ops"][:5])
                out.append(f" The int8 bundle's (kernel time {p8['kernel_ms_per_call']} ms a call, the profiler's own "
                           f"cost included): {ops8}.")
            out.append("\n")
        if "same_size" in part:
            w, h = part["same_size"]
            run = _predict_runs(part)[0]
            ours = run["rows"][0]
            out.append(f"\nSame-size batches ({w}×{h}, 16 a call; the bundle fed them stacked on the channel axis, "
                       f"`[H, W, 48]`): {run.get('same_size_throughput_ratio')}× the baseline's throughput, labels "
                       f"as one-by-one calls: {part['batch_label_agreement']}; the same images one call each: "
                       f"{ours.get('same_size_one_by_one_items_per_s')} images/s. The in-graph resize + crop + "
                       f"normalisation alone: p50 {part['in_graph_resize_p50_ms']} ms.\n")
    if r.get("knn"):
        out += ["\nThe kNN head alone (random 384-d training vectors; the bundle's file grows by their bytes):\n",
                _table(r["knn"]["rows"], [("training vectors", "n"), ("file bytes", "bytes"), ("build s", "build_s"),
                                          ("load s", "load_s"), ("query p50 ms", "p50_ms"), ("p99 ms", "p99_ms")])]
    return "".join(out) + "\n" + _machine_line(r) + "\n"


def predict_paths(results: Path, base: str) -> str:
    r = load("predict", results)
    if not r or not r.get("paths"):
        return _missing("predict", "python benchmarks/bench_predict.py --only paths")
    p = r["paths"]
    for row in p["rows"]:  # the share of cached items at which the store path takes the fast path's time
        gap = row["store_new_s"] - row["store_cached_s"]
        row["break_even"] = f"{round(100 * (row['store_new_s'] - row['fast_s']) / gap)} %" if gap > 0 else "-"
    return (f"`python benchmarks/bench_predict.py --only paths` — {p['how']}; seconds per call "
            f"({_source('predict', r, base)}){_load_during(p)}:\n"
            + _table(p["rows"], [("new texts", "items"), ("in memory (fast path) s", "fast_s"),
                                 ("store, all new s", "store_new_s"), ("store, all cached s", "store_cached_s"),
                                 ("store new / fast", "store_new_over_fast"),
                                 ("store cached / fast", "store_cached_over_fast"),
                                 ("break-even: share cached", "break_even")])
            + f"\nDefault threshold: in memory up to {p['fast_path_max_items']} items.\n\n" + _machine_line(r) + "\n")


RENDERERS: dict[str, Callable[[Path, str], str]] = {
    "scale": scale,
    "predict": predict,
    "predict-paths": predict_paths,
    "readme-performance": readme_performance,
    "embed-text": embed_text,
    "embed-images": embed_images,
    "embed-warm-rss": embed_warm_rss,
    "heads": heads,
    "finetune": finetune,
    "fewshot": fewshot,
    "fewshot-quiet": lambda results, base: fewshot(results, base, "fewshot_quiet"),
    "fewshot-depth": lambda results, base: fewshot(results, base, "fewshot_depth"),
    "fewshot-trials": lambda results, base: fewshot(results, base, "fewshot_trials"),
    "fewshot-cost": fewshot_cost,
    "fewshot-cli": fewshot_cli,
    "fewshot-cli-hidden": lambda results, base: fewshot_cli(results, base, "fewshot_cli_hidden"),
    "ray": ray,
    "ray-paper": ray_paper,
    "ray-device": ray_device,
    "gpu-embed": gpu_embed,
    "integrity": integrity,
    "quality": quality,
    "sequences": sequences,
}


def base_for(path: Path, root: Path = ROOT) -> str:
    """The relative path from ``path``'s folder to benchmarks/results/."""
    rel = path.relative_to(root)
    return BASES[rel.parts[0] if len(rel.parts) > 1 else rel.name]


def regenerate(text: str, base: str = BASES["README.md"], results: Path = RESULTS) -> str:
    """``text`` with every generated block re-rendered from ``results`` (links relative to ``base``)."""
    def block(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"error: unknown results block {name!r}; known: {', '.join(RENDERERS)}")
        return m.group(1) + RENDERERS[name](results, base) + m.group(4)

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file would change")
    args = parser.parse_args(argv)
    stale = []
    for path in doc_files():
        text = path.read_text()
        new = regenerate(text, base_for(path))
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("out of date with benchmarks/results/: " + ", ".join(map(str, stale))
              + "\nhint: run `python benchmarks/report.py` and commit the result", file=sys.stderr)
        return 1
    for path in stale:
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
