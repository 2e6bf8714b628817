"""The store's truth layer at 100M items (issue 12): Lance vs Delta Lake vs a home-made key index, measured.

    python benchmarks/bench_store_layer.py                       # 10M keys, 2,000 commits
    python benchmarks/bench_store_layer.py --keys 1000000 --commits 500   # quick
    python benchmarks/bench_store_layer.py --commits 25000       # the issue's commit count (slow)

Needs ``pip install pylance deltalake`` (not dependencies of headstart: only this evaluation uses them).
Every design stores the same thing: a fixed-width 16-byte key digest per item and its row id.

* ``lance``: a Lance dataset (key ``fixed_size_binary(16)``, ``row`` int64), BTree scalar index on ``key``;
  look-up = ``to_table(filter=key IN (...))`` (the plan is checked to use the index).
* ``delta``: a Delta table (Parquet files + JSON commit log), same columns, no secondary index;
  look-up = the same filter through ``DeltaTable.to_pyarrow_dataset()`` (file statistics cannot prune
  random digests, so it scans the key column).
* ``keyindex``: ``headstart.engine.store.keyindex`` (sorted ``S16`` segments, memory-mapped,
  ``np.searchsorted``; size-tiered merges; an fsync'ed append-only commit log).

Measured, each in its own child process (peak RSS = the child's ``VmHWM``):
``build`` (N keys in 1M-key appends, then the index), ``lookup`` (open + 10,000 present and 1,000
absent random keys, twice: cold and warm), ``commits`` (K appends of 4,096 keys into a fresh table:
seconds per commit over the first and last 10 %, then open + 10,000 look-ups on the result),
``kill9`` (a writer appending in a loop is sent SIGKILL after its 20th reported commit; the table is
then opened and its row count checked against the commits reported), and install size.
Results: a table and ``benchmarks/results/store_layer.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

WORK = C.WORK / "store-layer"
DESIGNS = ("lance", "delta", "keyindex")
BUILD_BATCH = 1_000_000
COMMIT_ROWS = 4096


# -- the three designs behind one small interface -----------------------------------------------------------


def _keys(n: int, seed: int):
    import numpy as np

    return np.frombuffer(np.random.default_rng(seed).bytes(16 * n), dtype="S16")


def _table(keys, first_row: int):
    import numpy as np
    import pyarrow as pa

    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(keys.tobytes())])
    return pa.table({"key": column, "row": pa.array(np.arange(first_row, first_row + len(keys)), pa.int64())})


def append(design: str, path: Path, keys, first_row: int) -> None:
    if design == "lance":
        import lance

        lance.write_dataset(_table(keys, first_row), str(path), mode="append" if path.exists() else "create")
    elif design == "delta":
        from deltalake import write_deltalake

        write_deltalake(str(path), _table(keys, first_row), mode="append")
    else:
        from headstart.engine.store.keyindex import KeyIndex

        import numpy as np

        KeyIndex(path).commit(keys, np.arange(first_row, first_row + len(keys)))


def finish_build(design: str, path: Path) -> None:
    if design == "lance":
        import lance

        lance.dataset(str(path)).create_scalar_index("key", index_type="BTREE")


def lookup(design: str, path: Path, keys) -> tuple[int, bool | None]:
    """(rows found, whether an index served the query)."""
    if design == "keyindex":
        from headstart.engine.store.keyindex import KeyIndex

        return int((KeyIndex(path).lookup(keys) >= 0).sum()), True
    import pyarrow.compute as pc

    wanted = _table(keys, 0).column("key").combine_chunks()
    if design == "lance":
        import lance

        ds = lance.dataset(str(path))
        scanner = ds.scanner(filter=pc.field("key").isin(wanted), columns=["key", "row"])
        used = "ScalarIndexQuery" in scanner.explain_plan()
        return scanner.to_table().num_rows, used
    import pyarrow.dataset as pds
    from deltalake import DeltaTable

    # the table's current Parquet files (DeltaTable.to_pyarrow_dataset() aborted the process on this query)
    dataset = pds.dataset(DeltaTable(str(path)).file_uris(), format="parquet")
    return dataset.to_table(filter=pc.field("key").isin(wanted), columns=["key", "row"]).num_rows, False


def count(design: str, path: Path) -> int:
    if design == "lance":
        import lance

        return lance.dataset(str(path)).count_rows()
    if design == "delta":
        from deltalake import DeltaTable

        return DeltaTable(str(path)).to_pyarrow_dataset().count_rows()
    from headstart.engine.store.keyindex import KeyIndex

    return len(KeyIndex(path))


def _warm_imports(design: str) -> None:
    """Import the design's library before timing (the first commit must not pay for it)."""
    import importlib

    importlib.import_module({"lance": "lance", "delta": "deltalake", "keyindex": "headstart.engine.store.keyindex"}[design])


# -- child-process entry points ---------------------------------------------------------------------


def child_build(design: str, path: Path, n: int) -> dict[str, Any]:
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    for first in range(0, n, BUILD_BATCH):
        append(design, path, _keys(min(BUILD_BATCH, n - first), seed=first), first)
    appended = time.perf_counter() - start
    finish_build(design, path)
    return {"append_s": round(appended, 2), "index_s": round(time.perf_counter() - start - appended, 2),
            "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file())}


def child_lookup(design: str, path: Path, n: int, probes: int = 10_000) -> dict[str, Any]:
    import numpy as np

    _warm_imports(design)
    rng = np.random.default_rng(42)
    rows = rng.choice(n, probes, replace=False)
    present = np.concatenate([_keys(min(BUILD_BATCH, n - f), seed=f)[rows[(rows >= f) & (rows < f + BUILD_BATCH)] - f]
                              for f in range(0, n, BUILD_BATCH)])
    probe = np.concatenate([present, _keys(1000, seed=-1 % 2**32)])
    out = {}
    for run in ("cold", "warm"):
        start = time.perf_counter()
        found, used = lookup(design, path, probe)
        out[f"{run}_s"] = round(time.perf_counter() - start, 4)
    out.update(found=found, expected=len(present), index_used=used)
    return out


def child_imports(design: str, path: Path, n: int) -> dict[str, Any]:
    """Only the imports a look-up needs: the floor under ``lookup``'s peak RSS."""
    import numpy  # noqa: F401
    import pyarrow.compute  # noqa: F401

    _warm_imports(design)
    return {}


def child_commits(design: str, path: Path, commits: int) -> dict[str, Any]:
    shutil.rmtree(path, ignore_errors=True)
    _warm_imports(design)
    times = []
    for i in range(commits):
        keys = _keys(COMMIT_ROWS, seed=10_000_000 + i)
        start = time.perf_counter()
        append(design, path, keys, i * COMMIT_ROWS)
        times.append(time.perf_counter() - start)
    tenth = max(1, commits // 10)
    start = time.perf_counter()
    n = count(design, path)
    opened = time.perf_counter() - start
    probe = _keys(COMMIT_ROWS, seed=10_000_000 + commits // 2)[:2000]
    start = time.perf_counter()
    found, used = lookup(design, path, probe)
    return {"commits": commits, "total_s": round(sum(times), 2),
            "first_ms": round(1e3 * sum(times[:tenth]) / tenth, 2),
            "last_ms": round(1e3 * sum(times[-tenth:]) / tenth, 2), "rows": n, "open_count_s": round(opened, 3),
            "lookup_2000_s": round(time.perf_counter() - start, 4), "found": found, "index_used": used,
            "files": sum(1 for f in path.rglob("*") if f.is_file())}


def child_writer(design: str, path: Path) -> None:
    """Append forever, printing ``committed <i>`` after each commit returns."""
    shutil.rmtree(path, ignore_errors=True)
    i = 0
    while True:
        append(design, path, _keys(COMMIT_ROWS, seed=20_000_000 + i), i * COMMIT_ROWS)
        i += 1
        print(f"committed {i}", flush=True)


# -- the parent -------------------------------------------------------------------------------------


def child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    try:
        run = C.run_process([sys.executable, __file__, "child", *args], env)
    except RuntimeError as exc:  # a crashing library is a finding, not the end of the comparison
        return {"error": str(exc)}
    reply = json.loads(run["stdout"].strip().splitlines()[-1])
    return {**reply, "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"]}


def kill9(design: str, env: dict[str, str], after: int = 20) -> dict[str, Any]:
    """SIGKILL a looping writer once it has reported ``after`` commits; then open and count."""
    path = WORK / f"kill-{design}"
    proc = subprocess.Popen([sys.executable, __file__, "child", "writer", design, str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    reported = 0
    for line in proc.stdout:
        reported = int(line.split()[1])
        if reported >= after:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        rows = count(design, path)
        committed = rows // COMMIT_ROWS
        ok = rows % COMMIT_ROWS == 0 and committed >= reported  # whole commits only, none reported lost
        return {"reported": reported, "rows": rows, "ok": ok}
    except Exception as exc:  # noqa: BLE001 - a table that cannot be opened is the finding
        return {"reported": reported, "error": f"{type(exc).__name__}: {exc}", "ok": False}


def install_sizes() -> dict[str, float]:
    import importlib.metadata as md

    sizes = {}
    for dist in ("pylance", "deltalake", "lance-namespace", "lance-namespace-urllib3-client", "pydantic",
                 "pydantic-core", "arro3-core"):
        try:
            files = md.distribution(dist).files or []
        except md.PackageNotFoundError:
            continue
        sizes[dist] = round(sum((f.locate().stat().st_size for f in files if Path(f.locate()).is_file())) / 2**20, 1)
    return sizes


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        what, design, path = sys.argv[2], sys.argv[3], Path(sys.argv[4])
        if what == "writer":
            child_writer(design, path)
            return
        n = int(sys.argv[5])
        fn = {"build": child_build, "lookup": child_lookup, "commits": child_commits, "imports": child_imports}[what]
        print(json.dumps(fn(design, path, n)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    args = parser.parse_args()
    env = C.child_env(2, WORK / "home")
    WORK.mkdir(parents=True, exist_ok=True)
    info, rows = C.machine(), []
    for design in args.designs:
        path = WORK / f"{design}-{args.keys}"
        row: dict[str, Any] = {"design": design, "loadavg": C.loadavg()}
        print(f"-- {design}: build {args.keys:,} keys", file=sys.stderr, flush=True)
        build = child(["build", design, str(path), str(args.keys)], env)
        if "error" in build:
            row["error"] = build["error"]
            rows.append(row)
            continue
        row.update(build_s=build["append_s"], index_s=build["index_s"], build_rss_mb=build["peak_rss_mb"],
                   mb_on_disk=round(build["bytes"] / 2**20, 1))
        print(f"-- {design}: look up", file=sys.stderr, flush=True)
        row["import_rss_mb"] = child(["imports", design, str(path), "0"], env).get("peak_rss_mb")
        look = child(["lookup", design, str(path), str(args.keys)], env)
        if "error" in look:
            row["lookup_error"] = look["error"]
        else:
            row.update(lookup_cold_s=look["cold_s"], lookup_warm_s=look["warm_s"], lookup_rss_mb=look["peak_rss_mb"],
                       lookup_found=f"{look['found']}/{look['expected']}", index_used=look["index_used"])
        shutil.rmtree(path, ignore_errors=True)
        print(f"-- {design}: {args.commits} commits", file=sys.stderr, flush=True)
        commits = child(["commits", design, str(WORK / f"commits-{design}"), str(args.commits)], env)
        if "error" in commits:
            row["commits_error"] = commits["error"]
        else:
            row.update(commit_first_ms=commits["first_ms"], commit_last_ms=commits["last_ms"],
                       commits_total_s=commits["total_s"], after_commits_open_s=commits["open_count_s"],
                       after_commits_lookup_s=commits["lookup_2000_s"], after_commits_files=commits["files"],
                       after_commits_index_used=commits["index_used"])
        shutil.rmtree(WORK / f"commits-{design}", ignore_errors=True)
        print(f"-- {design}: kill -9", file=sys.stderr, flush=True)
        row["kill9"] = kill9(design, env)
        shutil.rmtree(WORK / f"kill-{design}", ignore_errors=True)
        rows.append(row)
    columns = ["design", "build_s", "index_s", "mb_on_disk", "lookup_cold_s", "lookup_warm_s", "import_rss_mb", "lookup_rss_mb",
               "lookup_found", "index_used", "commit_first_ms", "commit_last_ms", "after_commits_open_s",
               "after_commits_lookup_s", "after_commits_files"]
    print(f"\n{args.keys:,} keys; {args.commits:,} commits of {COMMIT_ROWS:,} keys")
    print(C.table(rows, columns))
    for row in rows:
        print(f"{row['design']}: kill -9 {row['kill9']}")
    sizes = install_sizes()
    print(f"install sizes (MB): {sizes}")
    previous = C.RESULTS / "store_layer.json"
    kept = []
    if previous.is_file():  # designs measured in an earlier run at the same sizes are kept
        old = json.loads(previous.read_text())
        if (old.get("keys"), old.get("commits")) == (args.keys, args.commits):
            kept = [r for r in old["rows"] if r["design"] not in args.designs]
    path = C.save("store_layer", {"keys": args.keys, "commits": args.commits, "commit_rows": COMMIT_ROWS,
                                  "machine": info, "rows": kept + rows, "install_mb": sizes})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
