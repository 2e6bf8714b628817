"""Prediction latency and throughput: a headstart bundle (one ONNX file on onnxruntime) against what users write
today, in the same process, with the same thread count.

    python benchmarks/bench_predict.py [--threads 2] [--calls 200] [--only text|images|knn]

- text: the README's support-ticket model (MiniLM + linear head) as a bundle fed raw strings, against
  ``SentenceTransformer.encode`` + a fitted scikit-learn ``LogisticRegression.predict_proba``.
- images: an EfficientNet-Lite0 + linear model on a photo folder (crops of scikit-learn's sample photos) as a
  bundle fed decoded pixels, against the PyTorch eager EfficientNet-Lite0 (the module headstart exports) fed the
  same pixels resized by Pillow + a fitted ``LogisticRegression.predict_proba``.

Single item: warm p50/p99 of one call per item (``--calls`` calls after 10 warm-up calls), the engines taking
turns call by call so load from other jobs hits both alike; images also time the bundle's in-graph resize alone.
Batch: items/s over the test items in batches (text 32; images of differing sizes: the bundle takes one image
per call, torch gets batches of 16; same-size images (resized to ``SAME_SIZE``): batches of 16 for both, the
bundle fed them stacked on the channel axis).
knn: the kNN head alone over 10,000-200,000 random 384-d vectors (file size, build, load, query p50).
Writes benchmarks/results/predict.json; ``python benchmarks/report.py`` renders it into docs/deploy.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HOME, RESULTS, ROOT, WORK, machine, save, table  # noqa: E402

OUT = WORK / "predict"
SAME_SIZE = (400, 300)  # (width, height) of the same-size image batch
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
TEST = ROOT / "examples" / "support-tickets" / "test.csv"


def _texts(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def _labels(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["label"] for row in csv.DictReader(fh)]


def latency(fn: Callable[[Any], Any], items: list[Any], calls: int) -> dict[str, float]:
    return paired_latency([fn], items, calls)[0]


def paired_latency(fns: list[Callable[[Any], Any]], items: list[Any], calls: int) -> list[dict[str, float]]:
    """Warm p50/p99 of one call per item for each engine in ``fns``, the engines taking turns call by call
    (so a burst of load from other jobs on this shared machine hits them alike)."""
    for item in items[:10]:
        for fn in fns:
            fn(item)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(calls):
        for k, fn in enumerate(fns if i % 2 == 0 else fns[::-1]):
            start = time.perf_counter()
            fn(items[i % len(items)])
            times[k if i % 2 == 0 else len(fns) - 1 - k].append(time.perf_counter() - start)
    out = []
    for t in times:
        ms = np.asarray(t) * 1000
        out.append({"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)})
    return out


def throughput(fn: Callable[[list[Any]], Any], items: list[Any], batch: int, repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, len(items), batch):
            fn(items[i:i + batch])
        best = max(best, len(items) / (time.perf_counter() - start))
    return round(best, 1)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    from headstart.engine.bundle.loader import session_options

    return ort.InferenceSession(str(path), session_options(threads=threads), providers=["CPUExecutionProvider"])


def bench_text(threads: int, calls: int) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    import headstart as hs
    from headstart.plugins.backbones.minilm import _model_dir

    model_dir = OUT / "support-linear"
    if not (model_dir / "manifest.json").is_file():
        hs.train(str(TRAIN), "linear", backbone="minilm-l6", out=model_dir, progress=False)
    bundle = OUT / "support.onnx"
    hs.bundle(model_dir, bundle)
    session = _session(bundle, threads)
    bundle8 = OUT / "support-int8.onnx"  # the int8 bundle: its gate reports the label agreement and accuracy delta
    parity8 = hs.bundle(model_dir, bundle8, precision="int8").parity
    session8 = _session(bundle8, threads)
    torch.set_num_threads(threads)
    st = SentenceTransformer(_model_dir(), device="cpu")
    lr = LogisticRegression(max_iter=1000).fit(st.encode(_texts(TRAIN), batch_size=32), _labels(TRAIN))
    texts = _texts(TEST)
    many = (texts * (512 // len(texts) + 1))[:512]

    def bundle_one(t: str):
        return session.run(["probabilities", "label"], {"text": np.array([t], dtype=object)})

    def bundle_many(ts: list[str]):
        return session.run(["probabilities", "label"], {"text": np.array(ts, dtype=object)})

    def int8_one(t: str):
        return session8.run(["probabilities", "label"], {"text": np.array([t], dtype=object)})

    def int8_many(ts: list[str]):
        return session8.run(["probabilities", "label"], {"text": np.array(ts, dtype=object)})

    def st_one(t: str):
        return lr.predict_proba(st.encode([t], batch_size=1))

    def st_many(ts: list[str]):
        return lr.predict_proba(st.encode(ts, batch_size=len(ts)))

    ours, theirs, ours8 = paired_latency([bundle_one, st_one, int8_one], texts, calls)
    rows = [{"engine": "headstart bundle (onnxruntime)", **ours, "items_per_s": throughput(bundle_many, many, 32)},
            {"engine": "SentenceTransformer.encode + LogisticRegression", **theirs,
             "items_per_s": throughput(st_many, many, 32)},
            {"engine": "headstart bundle --precision int8", **ours8, "items_per_s": throughput(int8_many, many, 32)}]
    agree = float(np.mean([a == b for a, b in zip(bundle_many(texts)[1], lr.predict(st.encode(texts)))]))
    return {"rows": rows, "items": len(texts), "batch_items": len(many), "batch_size": 32,
            "p50_ratio": round(rows[1]["p50_ms"] / rows[0]["p50_ms"], 2),
            "p50_ratio_int8": round(rows[1]["p50_ms"] / rows[2]["p50_ms"], 2), "int8_parity": parity8,
            "throughput_ratio": round(rows[0]["items_per_s"] / rows[1]["items_per_s"], 2), "label_agreement": agree}


def photos(root: Path, per_class: int, seed: int) -> list[Path]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    paths = []
    for name, photo in zip(("china", "flower"), load_sample_images().images):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            h, w = (int(v) for v in rng.integers(160, 420, size=2))
            y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
            path = root / name / f"{j:02d}.jpg"
            if not path.exists():
                Image.fromarray(photo[y:y + h, x:x + w]).save(path, quality=90)
            paths.append(path)
    return paths


def bench_images(threads: int, calls: int) -> dict[str, Any]:
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    import headstart as hs
    from headstart.engine.bundle.image_graph import image_graph
    from headstart.engine.embed.imaging import _resize_crop, normalise_batch
    from headstart.plugins.backbones.efficientnet import efficientnet_spec

    train_paths = photos(OUT / "photos" / "train", 24, 0)
    test_paths = photos(OUT / "photos" / "test", 16, 1)
    model_dir = OUT / "photo-linear"
    if not (model_dir / "manifest.json").is_file():
        hs.train(str(OUT / "photos" / "train"), "linear", backbone="efficientnet-lite0", out=model_dir, progress=False)
    bundle = OUT / "photos.onnx"
    hs.bundle(model_dir, bundle)
    session = _session(bundle, threads)
    torch.set_num_threads(threads)
    spec = efficientnet_spec()
    net = spec.build_torch().eval()
    prep = spec.preprocessing

    def torch_features(images: list[np.ndarray]) -> np.ndarray:
        batch = normalise_batch([np.asarray(_resize_crop(Image.fromarray(im), prep)) for im in images], prep)
        with torch.inference_mode():
            return net(pixel_values=torch.from_numpy(batch)).numpy()

    decode = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    train_images, test_images = [decode(p) for p in train_paths], [decode(p) for p in test_paths]
    lr = LogisticRegression(max_iter=1000).fit(torch_features(train_images), [p.parent.name for p in train_paths])

    def bundle_one(im: np.ndarray):
        return session.run(["probabilities", "label"], {"image": im})

    def bundle_many(ims: list[np.ndarray]):  # one call per image: sizes differ
        return [bundle_one(im) for im in ims]

    def bundle_batch(ims: list[np.ndarray]):  # same-size images: one call, stacked on the channel axis
        return session.run(["probabilities", "label"], {"image": np.concatenate(ims, axis=2)})

    def torch_one(im: np.ndarray):
        return lr.predict_proba(torch_features([im]))

    def torch_many(ims: list[np.ndarray]):
        return lr.predict_proba(torch_features(ims))

    pre = _session_of(image_graph(prep), threads)
    ours, theirs, resize_only = paired_latency(
        [bundle_one, torch_one, lambda im: pre.run(None, {"image": im})], test_images, calls)
    same = [np.asarray(Image.fromarray(im).resize(SAME_SIZE, Image.Resampling.BILINEAR)) for im in test_images]
    rows = [{"engine": "headstart bundle (onnxruntime)", **ours, "items_per_s": throughput(bundle_many, test_images, 16),
             "same_size_items_per_s": throughput(bundle_batch, same, 16),
             "same_size_one_by_one_items_per_s": throughput(bundle_many, same, 16)},
            {"engine": "PyTorch eager EfficientNet-Lite0 + LogisticRegression", **theirs,
             "items_per_s": throughput(torch_many, test_images, 16), "same_size_items_per_s": throughput(torch_many, same, 16)}]
    agree = float(np.mean([str(bundle_one(im)[1][0]) == str(lr.predict(torch_features([im]))[0]) for im in test_images]))
    batch_agree = float(np.mean([a == b for a, b in zip(bundle_batch(same)[1], [bundle_one(im)[1][0] for im in same])]))
    return {"rows": rows, "items": len(test_images), "batch_items": len(test_images), "batch_size": 16,
            "same_size": list(SAME_SIZE), "in_graph_resize_p50_ms": resize_only["p50_ms"],
            "p50_ratio": round(rows[1]["p50_ms"] / rows[0]["p50_ms"], 2),
            "throughput_ratio": round(rows[0]["items_per_s"] / rows[1]["items_per_s"], 2),
            "same_size_throughput_ratio": round(rows[0]["same_size_items_per_s"] / rows[1]["same_size_items_per_s"], 2),
            "label_agreement": agree, "batch_label_agreement": batch_agree}


def _session_of(model: Any, threads: int):
    import onnxruntime as ort

    from headstart.engine.bundle.loader import session_options

    return ort.InferenceSession(model.SerializeToString(), session_options(threads=threads, needs_extensions=False),
                                providers=["CPUExecutionProvider"])


def bench_knn(threads: int, calls: int) -> dict[str, Any]:
    """The kNN head alone as a graph over n random 384-d training vectors: file size, build and load time,
    single-query p50 (what bounds KNN_MAX_CELLS in engine/bundle/head_graph.py)."""
    import onnxruntime as ort

    from headstart.engine.bundle import head_graph as graphs
    from headstart.engine.bundle.head_graph import head_graph
    from headstart.plugins.heads.knn import KNNHead

    graphs.KNN_MAX_CELLS = 10**9  # measured past the limit, to show what it bounds

    rng = np.random.default_rng(0)
    rows = []
    for n in (10_000, 50_000, 100_000, 200_000):
        X = rng.standard_normal((n, 384)).astype(np.float32)
        head = KNNHead().fit(X, rng.integers(0, 10, n).astype(str))
        model = type("M", (), {"head": head, "classes": list(head.classes_), "decision": None,
                               "manifest": {"head": {"name": "knn"}}})()
        start = time.perf_counter()
        data = head_graph(model, 384).SerializeToString()
        built = time.perf_counter() - start
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        start = time.perf_counter()
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        loaded = time.perf_counter() - start
        queries = list(rng.standard_normal((50, 1, 384)).astype(np.float32))
        rows.append({"n": n, "cells": n * 384, "bytes": len(data), "build_s": round(built, 2),
                     "load_s": round(loaded, 2),
                     **latency(lambda q: session.run(None, {"embedding": q}), queries, min(calls, 100))})
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--only", choices=["text", "images", "knn"], default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HEADSTART_HOME", str(HOME))
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "threads": args.threads, "calls": args.calls}
    previous = RESULTS / "predict.json"
    if args.only and previous.is_file():  # one part re-measured: keep the others' figures
        old = json.loads(previous.read_text())
        result.update({k: v for k, v in old.items() if k in ("text", "images", "knn") and k != args.only})
    for name, fn in (("text", bench_text), ("images", bench_images), ("knn", bench_knn)):
        if args.only in (None, name):
            load_before = round(os.getloadavg()[0], 2)
            result[name] = fn(args.threads, args.calls)
            result[name]["loadavg_1min"] = [load_before, round(os.getloadavg()[0], 2)]  # others' jobs share the CPUs
            if name == "knn":
                print(table(result[name]["rows"], ["n", "cells", "bytes", "build_s", "load_s", "p50_ms", "p99_ms"]))
                continue
            print(f"\n{name}: p50 ratio {result[name]['p50_ratio']}x, throughput ratio "
                  f"{result[name]['throughput_ratio']}x, label agreement {result[name]['label_agreement']}")
            print(table(result[name]["rows"], ["engine", "p50_ms", "p99_ms", "items_per_s"]))
    save("predict", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
