"""Ray engine against the local engine: a tiny backbone at scale (the engine's own cost), and MiniLM 1 vs N workers.

    python benchmarks/bench_ray.py                                  # 1,000,000 items, 2 workers, then MiniLM
    python benchmarks/bench_ray.py --items 200000 --workers 2 --threads-per-worker 1 --texts 2000
    python benchmarks/bench_ray.py --parts tiny                     # only the tiny-backbone comparison

Tiny part: bench_scale.py's Parquet file (a fixed-size-list column of 16 float32, 10 labels, row groups of
100,000) and its ``onnx:`` backbone (MatMul 16→384 + L2 norm), so the model costs almost nothing. The local
engine (``headstart embed``) and the Ray engine (``embed_on_ray`` on a local cluster, ``--workers`` actors of
``--threads-per-worker`` CPUs each) embed it into an empty store; each runs in its own child process, whose
peak RSS (``VmHWM``) is the driver's. items/s = items / the job's own time (``stats.seconds["total"]``: from
opening the source to the last commit; the Ray cluster is started before, the actors and their sessions
inside). Both leave the FAISS index to the first search (``update_index=False`` on Ray, as the local CLI).

MiniLM part: ``--texts`` synthetic texts embedded by 1 and by ``--workers`` Ray actors, 1 onnxruntime thread
each by default, each into an empty store (the export is cached before).

Results: tables, and ``benchmarks/results/bench_ray.json`` (with the machine's load: other jobs slow it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

HEADSTART = str(Path(sys.executable).parent / "headstart")

# The Ray driver, in a child process: a local cluster started first (untimed), then one job; prints JSON.
RAY_CHILD = """
import json, logging, os, sys
import ray
from headstart.engine.distributed.cluster import local_cpus
from headstart.engine.distributed.ray_embed import embed_on_ray
source, backbone, workers, threads, split_rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ray.init(num_cpus=local_cpus(), include_dashboard=False, logging_level=logging.WARNING)
result = embed_on_ray(source, backbone=backbone, workers=workers, cpus_per_worker=threads, keep_rows=False,
                      update_index=False, progress=False, split_rows=int(split_rows) if split_rows != "0" else None)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
manifest = json.load(open(os.path.join(result.store_path, "manifest.json")))
print(json.dumps({"stats": result.stats.as_dict(), "vmhwm_mb": round(peak / 1024, 1), "shards": len(manifest["shards"]),
                  "commits": manifest["generation"] - 1,  # a new store starts at generation 1
                  "manifest_bytes": os.path.getsize(os.path.join(result.store_path, "manifest.json"))}))
ray.shutdown()
"""


def _last_json(text: str) -> dict[str, Any]:
    """The JSON object a child printed last (one line), or its whole stdout from the first ``{`` (indented)."""
    line = next((line for line in reversed(text.splitlines()) if line.startswith("{") and line.endswith("}")), None)
    return json.loads(line if line is not None else text[text.index("{"):])


def local_run(data: Path, backbone: str, env: dict[str, str], home: Path) -> dict[str, Any]:
    shutil.rmtree(home / "features", ignore_errors=True)
    load = C.loadavg()
    run = C.run_process([HEADSTART, "embed", str(data), "-b", backbone, "--json"], env)
    s = _last_json(run["stdout"])
    return {"engine": "local", "workers": None, "items": s["rows"], "embedded": s["embedded"],
            "job_s": s["seconds"]["total"], "items_per_s": round(s["rows"] / s["seconds"]["total"], 1),
            "process_wall_s": run["wall_s"], "driver_peak_rss_mb": run["peak_rss_mb"], "loadavg": load}


def ray_run(data: Path, backbone: str, env: dict[str, str], home: Path, workers: int, threads: int,
            split_rows: int = 0) -> dict[str, Any]:
    shutil.rmtree(home / "features", ignore_errors=True)
    load = C.loadavg()
    run = C.run_process([sys.executable, "-c", RAY_CHILD, str(data), backbone, str(workers), str(threads),
                         str(split_rows)], env)
    out = _last_json(run["stdout"])
    s = out["stats"]
    return {"engine": "ray", "workers": workers, "threads_per_worker": threads, "items": s["rows"],
            "embedded": s["embedded"], "job_s": s["seconds"]["total"],
            "items_per_s": round(s["rows"] / s["seconds"]["total"], 1), "process_wall_s": run["wall_s"],
            "driver_peak_rss_mb": out["vmhwm_mb"], "driver_commit_s": s["seconds"].get("commit", 0.0),
            "commits": out["commits"],
            "plan_s": s["seconds"].get("plan"), "seconds": s["seconds"], "shards": out["shards"],
            "manifest_bytes": out["manifest_bytes"], "loadavg": load}


def tiny(items: int, workers: int, threads: int) -> list[dict[str, Any]]:
    import bench_scale

    data = bench_scale.make_parquet(items, C.DATA)
    backbone = f"onnx:{bench_scale.make_backbone(C.DATA)}"
    home = C.WORK / f"home-ray-{items}"
    env = C.child_env(threads, home)
    C.run_process([HEADSTART, "export", backbone], env)  # untimed: both engines then find the export cached
    rows = [local_run(data, backbone, env, home)]
    print(f"-- local: {rows[-1]['items_per_s']} items/s", file=sys.stderr, flush=True)
    rows.append(ray_run(data, backbone, env, home, workers, threads))
    print(f"-- ray x{workers}: {rows[-1]['items_per_s']} items/s", file=sys.stderr, flush=True)
    rows[-1]["vs_local"] = round(rows[-1]["items_per_s"] / rows[0]["items_per_s"], 3)
    return rows


def minilm(texts: int, workers: int, threads: int) -> list[dict[str, Any]]:
    from _corpus import make_texts, write_csv

    data = write_csv(make_texts(texts, seed=11), C.DATA / f"ray_texts_{texts}.csv")
    home = C.WORK / "home-ray-minilm"
    env = C.child_env(threads, home)
    C.run_process([HEADSTART, "export", "minilm-l6"], env)
    rows = []
    for n in sorted({1, workers}):
        rows.append(ray_run(data, "minilm-l6", env, home, n, threads, split_rows=256))  # several splits per worker
        print(f"-- minilm ray x{n}: {rows[-1]['items_per_s']} items/s", file=sys.stderr, flush=True)
    for row in rows:
        row["vs_one_worker"] = round(row["items_per_s"] / rows[0]["items_per_s"], 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="tiny-backbone items (default 1M)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (default 2)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="CPUs and onnxruntime threads per actor")
    parser.add_argument("--texts", type=int, default=2000, help="MiniLM texts (default 2000)")
    parser.add_argument("--parts", nargs="+", default=["tiny", "minilm"], choices=["tiny", "minilm"])
    args = parser.parse_args()
    info = C.machine()
    payload: dict[str, Any] = {"machine": info, "items": args.items, "workers": args.workers,
                               "threads_per_worker": args.threads_per_worker, "texts": args.texts}
    columns = ["engine", "workers", "items", "job_s", "items_per_s", "driver_peak_rss_mb", "loadavg"]
    if "tiny" in args.parts:
        payload["tiny"] = tiny(args.items, args.workers, args.threads_per_worker)
        print(f"\ntiny backbone, {args.items:,} items")
        print(C.table(payload["tiny"], columns + ["vs_local", "shards"]))
    if "minilm" in args.parts:
        payload["minilm"] = minilm(args.texts, args.workers, args.threads_per_worker)
        print(f"\nMiniLM, {args.texts:,} texts, {args.threads_per_worker} thread(s) per worker")
        print(C.table(payload["minilm"], columns + ["vs_one_worker"]))
    previous = C.RESULTS / "bench_ray.json"
    if previous.is_file():  # a run of one part keeps the other part's last figures
        old = json.loads(previous.read_text())
        for part in ("tiny", "minilm"):
            if part not in payload and part in old:
                payload[part] = old[part]
    print(f"\nwrote {C.save('bench_ray', payload)}")


if __name__ == "__main__":
    main()
