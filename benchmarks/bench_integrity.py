"""What the feature store's integrity checks cost (issue 11, item 3: keep it under 10 %).

Side by side, alternating, in whole `headstart` processes on the same store:

* ``warm``: a warm re-run of ``headstart embed`` over 10,000 cached items;
* ``train``: ``headstart train --head linear`` over 200,000 cached vectors;

each with the checks on (the product) and off (the child sets
``headstart.engine.store.integrity.CHECKS = False`` before running the CLI: no shard hashing, no vector
invariants, no index hashing: the code before the checks). The backbone is a tiny ``onnx:`` graph (one
MatMul 16→384 + L2 normalisation over a numeric Parquet column), so building the store is fast and the
engine's own cost shows; its vectors are 384-d like MiniLM's. Also timed in-process: checking every shard
of each store once (``FeatureStore.damaged_shards()``), the cost a process pays on its first read.

    python benchmarks/bench_integrity.py               # 10,000 warm items, 200,000 train vectors, 3 runs each
    python benchmarks/bench_integrity.py --quick       # 2,000 / 20,000, 2 runs each (smoke test)

Prints a table and writes ``benchmarks/results/integrity.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, child_env, loadavg, machine, save, table  # noqa: E402

from headstart.engine.testing.tiny_backbones import projection_backbone  # noqa: E402

HOME = WORK / "home-integrity"
DATA = WORK / "data" / "integrity"
WIDTH, DIM, CLASSES = 16, 384, 10
_CHECKS_OFF = ("import sys\n"
               "import headstart.engine.store.integrity as integrity\n"
               "integrity.CHECKS = False\n"
               "from headstart.engine.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")


def tiny_backbone(folder: Path) -> str:
    """``onnx:`` graph: MatMul 16→384, then L2 normalisation (declared normalize=true)."""
    return f"onnx:{projection_backbone(folder, width=WIDTH, dim=DIM, name='tiny384')}"


def numeric_parquet(path: Path, rows: int, seed: int) -> Path:
    """``rows`` labelled 16-number items in 10 overlapping classes (a linear head has work to do)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((CLASSES, WIDTH)) * 1.5
    labels = rng.integers(0, CLASSES, rows)
    x = (centres[labels] + rng.standard_normal((rows, WIDTH))).astype(np.float32)
    flat = pa.array(x.reshape(-1), type=pa.float32())
    pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(flat, WIDTH),
                             "label": pa.array([f"c{i}" for i in labels])}), path)
    return path


def cli(args: list[str], checks: bool) -> list[str]:
    if checks:
        return [sys.executable, "-m", "headstart", *args]
    return [sys.executable, "-c", _CHECKS_OFF, *args]


def run(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``: wall seconds and CPU seconds (user + system, from ``wait4``): on a shared machine the
    CPU time is the steadier figure, as other processes' load stretches wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return {"wall_s": wall, "cpu_total": usage.ru_utime + usage.ru_stime, "stdout": out.decode()}


def side_by_side(name: str, args: list[str], runs: int, env: dict[str, str], after=None) -> dict:
    """Run ``args`` with checks on and off, alternating, ``runs`` times each; medians and the overhead."""
    walls: dict[str, list[float]] = {"on": [], "off": []}
    cpus: dict[str, list[float]] = {"on": [], "off": []}
    load = [loadavg()]
    for i in range(runs):
        for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = run(cli(args, mode == "on"), env)
            walls[mode].append(round(result["wall_s"], 3))
            cpus[mode].append(round(result["cpu_total"] - before.ru_utime - before.ru_stime, 3))
            if after is not None:
                after()
    load.append(loadavg())
    on, off = statistics.median(walls["on"]), statistics.median(walls["off"])
    con, coff = statistics.median(cpus["on"]), statistics.median(cpus["off"])
    return {"case": name, "runs": runs, "wall_off_s": round(off, 3), "wall_on_s": round(on, 3),
            "wall_overhead_pct": round(100 * (on - off) / off, 1), "cpu_off_s": round(coff, 3),
            "cpu_on_s": round(con, 3), "cpu_overhead_pct": round(100 * (con - coff) / coff, 1),
            "walls_on": walls["on"], "walls_off": walls["off"], "cpus_on": cpus["on"], "cpus_off": cpus["off"],
            "loadavg_before_after": load}


def check_all_shards(store_dir: Path) -> dict:
    """In-process: one fresh check of every shard (what a process pays on its first read)."""
    from headstart.engine.store import integrity
    from headstart.engine.store.features import FeatureStore

    integrity._intact.clear()
    store = FeatureStore.load(store_dir)
    t = time.perf_counter()
    damaged = store.damaged_shards()
    seconds = time.perf_counter() - t
    size = sum(s["bytes"] for s in store.manifest["shards"])
    return {"vectors": len(store), "shards": len(store.manifest["shards"]), "bytes": size,
            "check_s": round(seconds, 3), "mb_per_s": round(size / 2**20 / seconds, 1), "damaged": len(damaged)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 warm items, 20,000 train vectors, 2 runs")
    parser.add_argument("--warm", type=int, default=10_000)
    parser.add_argument("--train", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each case with checks on, and off")
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    if opts.quick:
        opts.warm, opts.train, opts.runs = 2_000, 20_000, 2
    shutil.rmtree(HOME, ignore_errors=True)
    DATA.mkdir(parents=True, exist_ok=True)
    backbone = tiny_backbone(DATA)
    warm = numeric_parquet(DATA / f"warm-{opts.warm}.parquet", opts.warm, seed=1)
    big = numeric_parquet(DATA / f"train-{opts.train}.parquet", opts.train, seed=2)
    envs = {name: child_env(opts.threads, HOME / name) for name in ("warm", "train")}  # one store each
    setup = {}
    for name, source in (("warm", warm), ("train", big)):
        result = run(cli(["embed", str(source), "-b", backbone, "--json"], True), envs[name])
        setup[name] = json.loads(result["stdout"])
        print(f"cold embed of {name} source: {setup[name]['embedded']} items in {result['wall_s']:.1f} s", flush=True)
    out = HOME / "model"
    rows = [side_by_side(f"embed warm re-run, {opts.warm:,} cached items",
                         ["embed", str(warm), "-b", backbone, "--json"], opts.runs, envs["warm"]),
            side_by_side(f"train --head linear, {opts.train:,} cached vectors",
                         ["train", str(big), "--head", "linear", "-b", backbone, "-o", str(out), "--json"],
                         opts.runs, envs["train"], after=lambda: shutil.rmtree(out, ignore_errors=True))]
    shards = {name: check_all_shards(HOME / name / "features" / setup[name]["fingerprint"]) for name in setup}
    print(table(rows, ["case", "runs", "wall_off_s", "wall_on_s", "wall_overhead_pct", "cpu_off_s", "cpu_on_s",
                       "cpu_overhead_pct"]))
    print()
    print(table([{"store": k, **v} for k, v in shards.items()],
                ["store", "vectors", "shards", "bytes", "check_s", "mb_per_s", "damaged"]))
    path = save("integrity", {"machine": machine(), "options": vars(opts), "side_by_side": rows,
                              "check_every_shard_once": shards})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
