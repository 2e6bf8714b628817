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
    if not rows:
        return _missing("text", "python benchmarks/bench_embed.py")
    lines = ["| job | headstart | against | result |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    loaded = [x for x in (text, images, warm, rss, heads) if x]
    facts = _machine_line({"machine": {**loaded[0]["machine"], "notes": ""}})
    notes = dict.fromkeys(x["machine"]["notes"].rstrip(".") for x in loaded if x["machine"].get("notes"))
    return "\n".join(lines) + "\n\n" + facts + "".join(f" Notes: {n}." for n in notes) + "\n"


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


def fewshot(results: Path, base: str) -> str:
    r = load("fewshot", results)
    if not r:
        return _missing("fewshot", "python benchmarks/bench_fewshot.py")
    rows = []
    for c in r["cells"]:
        rows.append({**c, "accuracy": f"{c['accuracy_mean']:.3f} ± {c['accuracy_sd']:.3f}",
                     "seconds": _n(c["seconds_mean"]),
                     "vs": (f"{c['vs_setfit_accuracy_pts']:+.1f} pts, {c['vs_setfit_time_ratio']:.2f}× the time"
                            if "vs_setfit_accuracy_pts" in c else "")})
    tasks = "; ".join(f"`{t}`: {', '.join(labels)}" for t, labels in r["tasks"].items())
    return (f"`{r['machine']['command']}` — {_source('fewshot', r, base)}; test items per class: "
            f"{r['test_per_class']}; torch threads per method: {r.get('torch_threads', '?')}; sections: {tasks}.\n"
            + _table(rows, [("task", "task"), ("k / class", "k"), ("method", "method"), ("seeds", "seeds"),
                            ("test accuracy (mean ± sd)", "accuracy"), ("train s", "seconds"),
                            ("vs SetFit, same seeds", "vs")])
            + "\n" + _machine_line(r) + "\n")


def ray(results: Path, base: str) -> str:
    r = load("bench_ray", results)
    if not r:
        return _missing("bench_ray", "python benchmarks/bench_ray.py")
    return (f"`{r['machine']['command']}` — {_source('bench_ray', r, base)}:\n"
            + _table(r["runs"], [("engine", "engine"), ("workers", "workers"), ("items/s", "items_per_s"),
                                 ("wall s", "wall_s"), ("driver serial s", "driver_s")])
            + "\nOn paper (N nodes like this one, 2 workers each, capped by the driver's serial rate):\n"
            + _table(r["paper"], [("nodes", "nodes"), ("workers", "workers"), ("items/s", "items_per_s"),
                                  ("bound", "bound")])
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


RENDERERS: dict[str, Callable[[Path, str], str]] = {
    "readme-performance": readme_performance,
    "embed-text": embed_text,
    "embed-images": embed_images,
    "embed-warm-rss": embed_warm_rss,
    "heads": heads,
    "finetune": finetune,
    "fewshot": fewshot,
    "ray": ray,
    "integrity": integrity,
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
