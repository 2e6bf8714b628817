"""Ray engine throughput: the local engine, then 1 and 2 Ray workers on this machine, and N nodes on paper.

    python benchmarks/bench_ray.py [--texts 3000] [--chunk-size 250]

Each run embeds the same texts into an empty store (the export is cached once). The Ray phase
time includes starting the actors and their onnxruntime sessions. The paper model: N nodes of
this machine each give the 2-worker rate, until the driver's serial work (reading + hashing the
source, committing shards) is the limit; both measured here. Writes benchmarks/results/bench_ray.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DATA, HOME, loadavg, machine, save, table  # noqa: E402
from _corpus import make_texts, write_csv  # noqa: E402


def fresh_store(fingerprint: str | None) -> None:
    if fingerprint:
        shutil.rmtree(HOME / "features" / fingerprint, ignore_errors=True)


def run(kind: str, source: Path, workers: int, chunk_size: int, fingerprint: str | None) -> dict:
    from headstart.engine.distributed.ray_embed import embed_on_ray
    from headstart.engine.embed.pipeline import embed

    fresh_store(fingerprint)
    start = time.perf_counter()
    if kind == "local":
        result = embed(source, progress=False)
    else:
        result = embed_on_ray(source, workers=workers, chunk_size=chunk_size, progress=False)
    wall = time.perf_counter() - start
    s = result.stats
    phase = s.seconds["encode"] + s.seconds["write"] + (s.seconds["preprocess"] if kind == "local" else 0.0)
    return {"engine": kind, "workers": workers if kind == "ray" else None, "items": s.embedded,
            "wall_s": round(wall, 2), "items_per_s": round(s.embedded / wall, 1),
            "phase_s": round(phase, 2), "phase_items_per_s": round(s.embedded / phase, 1) if phase else None,
            "driver_s": round(s.seconds["read"] + s.seconds["write"], 3), "loadavg": loadavg(),
            "fingerprint": result.fingerprint}


def paper(rows: list[dict], items: int) -> list[dict]:
    """N nodes like this one (2 workers each): N x the 2-worker rate, capped by the driver's serial rate."""
    two = next(r for r in rows if r["workers"] == 2)
    per_node = two["phase_items_per_s"]
    driver_cap = items / max(two["driver_s"], 1e-9)
    return [{"nodes": n, "workers": 2 * n, "items_per_s": round(min(n * per_node, driver_cap), 0),
             "bound": "driver" if n * per_node > driver_cap else "workers"} for n in (1, 2, 4, 8, 16, 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--chunk-size", type=int, default=250)
    args = parser.parse_args()
    os.environ["HEADSTART_HOME"] = str(HOME)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    source = write_csv(make_texts(args.texts, seed=11), DATA / f"ray_texts_{args.texts}.csv")
    info = machine()
    rows = [run("local", source, 0, args.chunk_size, None)]
    fingerprint = rows[0]["fingerprint"]
    rows[0] = run("local", source, 0, args.chunk_size, fingerprint)  # export cached now: time the embedding only
    import ray

    ray.init(num_cpus=8, include_dashboard=False, logging_level=logging.WARNING)
    try:
        for workers in (1, 2):
            rows.append(run("ray", source, workers, args.chunk_size, fingerprint))
    finally:
        ray.shutdown()
    columns = ["engine", "workers", "items", "wall_s", "items_per_s", "phase_s", "phase_items_per_s", "driver_s"]
    projection = paper([r for r in rows if r["engine"] == "ray"], args.texts)
    print(table(rows, columns))
    print()
    print(table(projection, ["nodes", "workers", "items_per_s", "bound"]))
    path = save("bench_ray", {"machine": info, "texts": args.texts, "chunk_size": args.chunk_size,
                              "runs": rows, "paper": projection})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
