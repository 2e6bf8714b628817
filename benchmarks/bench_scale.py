"""The engine's own cost at millions of items (issue 12): a tiny ``onnx:`` backbone, real ``headstart`` processes.

    python benchmarks/bench_scale.py                     # 1,000,000 items
    python benchmarks/bench_scale.py --items 5000000     # 5M (or 10M: --items 10000000)
    python benchmarks/bench_scale.py --tag out-of-core   # label this run in the JSON
    python benchmarks/bench_scale.py --items 2000000 --steps train eval   # only some steps
    python benchmarks/bench_scale.py --store-only --items 10000000        # the store alone (no embedding)
    python benchmarks/bench_scale.py --items 10000000 --reuse-store --steps train eval predict  # the heads only

The backbone is one MatMul 16→384 followed by an L2 norm (``onnx:`` + its ``.headstart.json``
sidecar), over a Parquet file with a fixed-size-list column ``x`` of 16 float32 per row and a
``label`` column of 10 classes (class centres + Gaussian noise, so a linear head scores well below
100 %). The file is written row group by row group (never whole in RAM) into
``benchmarks/results/data/`` and reused. Each step is a child process (``headstart ...``) whose wall
time and peak RSS (the kernel's ``VmHWM``, see ``_common.run_process``) are recorded:

cold ``embed`` (empty store; the export is made before, untimed), warm ``embed`` (everything cached),
``train --head linear`` (validation split, then refit on all), ``eval`` on the same items,
``cache verify``, ``cache index`` (the FAISS index a first search would build) and kNN search latency
(100 single-vector ``store.search`` calls in one child process, after one warm-up call).

``--store-only`` measures the feature store alone at N items (16-d vectors, so 10M fit the disk): one writer
session committing N / 4,096 shard files staged with ``shards.write_shard_file`` (as Ray workers stage them)
through ``commit_shard_entries`` (ms per commit over the first and last 10 %, the checkpoint's and the key
index's size), then a fresh process opening it read-only and looking up 10,000 stored + 1,000 absent keys
(cold and warm) and reading 10,000 vectors: its peak RSS against the ~150 B per key the old key table took.

Results: a table, and ``benchmarks/results/scale.json`` (runs are appended, keyed by items and tag).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from headstart.engine.testing.tiny_backbones import projection_backbone  # noqa: E402

HEADSTART = str(Path(sys.executable).parent / "headstart")
IN_DIM, OUT_DIM, CLASSES = 16, 384, 10
ROW_GROUP = 100_000


def make_backbone(folder: Path) -> Path:
    """``tiny16.onnx`` (x (B, 16) → L2-normalised x @ W, (B, 384)) and its sidecar; returns the graph path."""
    path = folder / "tiny16.onnx"
    if path.is_file() and path.with_suffix(".headstart.json").is_file():
        return path
    return projection_backbone(folder, width=IN_DIM, dim=OUT_DIM, seed=7, name="tiny16",
                               description="bench_scale: MatMul 16->384 + L2 norm")


def make_parquet(n: int, folder: Path, seed: int = 0) -> Path:
    """``scale_<n>.parquet``: column ``x`` (fixed-size list of 16 float32), ``label`` (c0..c9), row group by row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"scale_{n}.parquet"
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, IN_DIM)).astype(np.float32) * 0.45
    names = np.array([f"c{i}" for i in range(CLASSES)], dtype=object)
    schema = pa.schema([("x", pa.list_(pa.float32(), IN_DIM)), ("label", pa.string())])
    tmp = path.with_suffix(".parquet.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, ROW_GROUP):
            rows = min(ROW_GROUP, n - start)
            y = rng.integers(0, CLASSES, rows)
            x = centres[y] + rng.standard_normal((rows, IN_DIM)).astype(np.float32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), IN_DIM)
            writer.write_table(pa.table({"x": column, "label": pa.array(names[y].tolist(), pa.string())},
                                        schema=schema))
    tmp.replace(path)
    return path


def knn_probe(home: Path, queries: int) -> None:
    """Child-process entry: open the only store under ``home``, time ``queries`` single-vector searches."""
    import numpy as np

    from headstart.engine.store.features import FeatureStore

    [root] = [p.parent for p in (home / "features").glob("*/manifest.json")]
    store = FeatureStore.load(root)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((queries + 1, store.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    start = time.perf_counter()
    store.search(q[:1], k=10)
    first = time.perf_counter() - start
    times = []
    for row in q[1:]:
        start = time.perf_counter()
        store.search(row[None, :], k=10)
        times.append(time.perf_counter() - start)
    print(json.dumps({"first_s": round(first, 4), "p50_ms": round(float(np.median(times)) * 1e3, 3),
                      "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 3),
                      "index": (store.manifest.get("index") or {}).get("type")}))


STORE_DIM = 16  # the store-only run: small vectors, so 10M items fit the disk; the key path is the same


def store_build(root: Path, n: int) -> None:
    """Child-process entry: N items into a new store as a Ray job would put them: shard files staged with
    ``shards.write_shard_file``, each committed with ``commit_shard_entries`` (one writer session)."""
    import numpy as np

    from headstart.engine.store import shards as sh
    from headstart.engine.store.features import FeatureStore

    store = FeatureStore.open(root, fingerprint="fp-scale", dim=STORE_DIM, backbone="bench", normalized=False)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((4096, STORE_DIM)).astype(np.float32)
    times = []
    with store.writer(update_index=False) as w:
        for lo in range(0, n, 4096):
            keys = [f"{i:064x}" for i in range(lo, min(lo + 4096, n))]
            table = sh.vector_table(keys, [None] * len(keys), block[:len(keys)])
            start = time.perf_counter()
            entry = sh.write_shard_file(root, sh.VECTORS, table, prefix=f"b{lo // 4096:07d}")
            w.commit_shard_entries([entry])
            times.append(time.perf_counter() - start)
    tenth = max(1, len(times) // 10)
    print(json.dumps({"commits": len(times), "first_10pct_ms": round(1e3 * float(np.mean(times[:tenth])), 2),
                      "last_10pct_ms": round(1e3 * float(np.mean(times[-tenth:])), 2),
                      "manifest_kb": round((root / "manifest.json").stat().st_size / 1024, 1),
                      "key_index_mb": round(sum(f.stat().st_size for f in (root / "keys").rglob("*")) / 2**20, 1)}))


def store_lookup(root: Path, n: int, probes: int = 10_000) -> None:
    """Child-process entry: open the store read-only (``check="hits"``) and look up ``probes`` stored and
    ``probes // 10`` absent keys, twice (cold, warm); then read their vectors."""
    import numpy as np

    from headstart.engine.store.features import FeatureStore

    start = time.perf_counter()
    store = FeatureStore.load(root, check="hits")
    opened = time.perf_counter() - start
    rng = np.random.default_rng(1)
    keys = [f"{i:064x}" for i in rng.choice(n, probes, replace=False)] + [f"{n + i:064x}" for i in range(probes // 10)]
    out = {"open_s": round(opened, 3)}
    for name in ("cold", "warm"):
        start = time.perf_counter()
        found = store.contains(keys)
        out[f"lookup_{name}_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    store.get(keys[:probes])
    out["get_s"] = round(time.perf_counter() - start, 3)
    out["found"] = int(found.sum())
    print(json.dumps(out))


def measure_store(n: int, threads: int) -> list[dict[str, Any]]:
    root = C.WORK / f"store-scale-{n}"
    shutil.rmtree(root, ignore_errors=True)
    env = C.child_env(threads, C.WORK / "home-store-scale")
    rows = []
    for name, entry in (("store build (staged shards + commit_shard_entries)", "store-build"),
                        ("store open + 11,000 look-ups, get 10,000", "store-lookup")):
        row = step(name, [sys.executable, __file__, entry, str(root), str(n)], env, n if entry == "store-build" else None)
        row.update(json.loads(row.pop("_stdout").strip().splitlines()[-1]))
        rows.append(row)
    rows[0]["table_mb_before"] = round(n * 150 / 2**20)  # the Python key table this replaced (~150 B per key)
    shutil.rmtree(root, ignore_errors=True)
    return rows


def step(name: str, cmd: list[str], env: dict[str, str], items: int | None = None) -> dict[str, Any]:
    print(f"-- {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    load = C.loadavg()
    run = C.run_process(cmd, env)
    row = {"step": name, "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"], "loadavg": load}
    if items:
        row["items_per_s"] = round(items / run["wall_s"], 1)
    row["_stdout"] = run["stdout"]
    return row


STEPS = ("embed-cold", "embed-warm", "train", "eval", "verify", "index", "knn")
EXTRA_STEPS = ("predict",)  # only when named: `predict -o` writes a Parquet row per item


def measure(n: int, threads: int, steps: tuple[str, ...] = STEPS, reuse_store: bool = False) -> list[dict[str, Any]]:
    data = make_parquet(n, C.DATA)
    model = make_backbone(C.DATA)
    backbone = f"onnx:{model}"
    home = C.WORK / f"home-scale-{n}"
    env = C.child_env(threads, home)
    C.run_process([HEADSTART, "export", backbone], env)  # untimed: the cold embed measures embedding only
    out = home / "models" / "linear"
    kept_model = reuse_store and "train" not in steps and (out / "manifest.json").exists()  # eval a kept model
    if not kept_model:
        shutil.rmtree(home / "models", ignore_errors=True)
    embed = [HEADSTART, "embed", str(data), "-b", backbone, "--json"]
    if reuse_store and any((home / "features").glob("*/manifest.json")):
        rows = []  # the store of an earlier run (--reuse-store): only the later steps are measured
    else:
        shutil.rmtree(home / "features", ignore_errors=True)
        rows = [step("embed cold", embed, env, n)]  # the later steps need the store
    if "embed-warm" in steps:
        rows.append(step("embed warm", embed, env, n))
    if not kept_model and ("train" in steps or "eval" in steps or "predict" in steps):
        train = step("train linear", [HEADSTART, "train", str(data), "-b", backbone, "--head", "linear", "-o",
                                      str(out), "--json"], env, n)
        output = json.loads(train["_stdout"])
        train["accuracy"] = round(output["metrics"]["accuracy"], 5)
        train["fit_passes"] = output["training"].get("fit_passes")  # full passes over the rows (validation, refit)
        reads = output["training"].get("reads") or {}  # bytes read of the store's shards, and / the rows' bytes
        train["read_gb"], train["read_passes"] = round(reads.get("bytes_read", 0) / 1e9, 2), reads.get("passes")
        rows.append(train)
    if "eval" in steps:
        ev = step("eval", [HEADSTART, "eval", str(out), str(data), "--json"], env, n)
        ev["accuracy"] = round(json.loads(ev["_stdout"])["accuracy"], 5)
        rows.append(ev)
    if "predict" in steps:
        predicted = home / "predictions.parquet"
        rows.append(step("predict -o parquet", [HEADSTART, "predict", str(out), str(data), "-o", str(predicted),
                                                "--json"], env, n))
        predicted.unlink(missing_ok=True)
    if "verify" in steps:
        rows.append(step("cache verify", [HEADSTART, "cache", "verify", "--json"], env, n))
    if "index" in steps:
        rows.append(step("cache index", [HEADSTART, "cache", "index", "--json"], env, n))
    if "knn" in steps:
        probe = step("knn search", [sys.executable, __file__, "knn-probe", str(home)], env)
        probe.update(json.loads(probe["_stdout"].strip().splitlines()[-1]))
        rows.append(probe)
    for row in rows:
        row.pop("_stdout")
    return rows


def record(n: int, tag: str, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    path = C.RESULTS / "scale.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs = [r for r in runs if not (r["items"] == n and r["tag"] == tag)]
    runs.append({"items": n, "tag": tag, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "machine": info, "steps": rows})
    return C.save("scale", {"backbone": "onnx: MatMul 16->384 + L2 norm (benchmarks/bench_scale.py)",
                            "machine": info, "runs": runs})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "knn-probe":
        knn_probe(Path(sys.argv[2]), queries=100)
        return
    if len(sys.argv) > 1 and sys.argv[1] in ("store-build", "store-lookup"):
        (store_build if sys.argv[1] == "store-build" else store_lookup)(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000], help="dataset sizes (default 1M)")
    parser.add_argument("--tag", default="current", help="label of this run in scale.json (e.g. baseline)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS + EXTRA_STEPS,
                        help="steps to run (embed cold always runs first; index builds an IVF of all vectors in RAM; "
                             "predict only when named)")
    parser.add_argument("--reuse-store", action="store_true",
                        help="keep the store an earlier run of this N left (no cold embed): train/eval/predict only; "
                             "without the train step, eval/predict use the model that run trained")
    parser.add_argument("--store-only", action="store_true",
                        help=f"only the store: N {STORE_DIM}-d items committed as staged shards, then look-ups "
                             "in a fresh process (no embedding; results under the tag TAG-store)")
    args = parser.parse_args()
    info = C.machine()
    if args.store_only:
        for n in args.items:
            rows = measure_store(n, args.threads)
            print(f"\n{n:,} items, store only ({args.tag})")
            print(C.table(rows, ["step", "wall_s", "items_per_s", "peak_rss_mb", "loadavg"]))
            print(json.dumps(rows, indent=1))
            print(f"wrote {record(n, args.tag + '-store', rows, info)}")
        return
    for n in args.items:
        rows = measure(n, args.threads, tuple(args.steps), args.reuse_store)
        print(f"\n{n:,} items ({args.tag})")
        print(C.table(rows, ["step", "wall_s", "items_per_s", "peak_rss_mb", "accuracy", "fit_passes", "read_passes",
                                   "loadavg"]))
        if rows[-1]["step"] == "knn search":
            print(f"knn search: first {rows[-1]['first_s']} s, p50 {rows[-1]['p50_ms']} ms, p95 {rows[-1]['p95_ms']} ms "
                  f"({rows[-1]['index']})")
        print(f"wrote {record(n, args.tag, rows, info)}")


if __name__ == "__main__":
    main()
