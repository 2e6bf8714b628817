"""Shared benchmark plumbing: paths, machine facts, child processes with wall time and peak RSS, the table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"  # committed: one small JSON per benchmark, read by report.py
WORK = ROOT / "benchmarks" / ".work"  # git-ignored: inputs, stores, exports, model copies
HOME = WORK / "home"  # a HEADSTART_HOME for benchmarks; run concurrently, give each its own
DATA = WORK / "data"
NOTES_ENV = "HEADSTART_BENCH_NOTES"  # free text saved with every result (e.g. "machine shared with 5 jobs")


def child_env(threads: int, home: Path = HOME) -> dict[str, str]:
    """Environment for child processes: HEADSTART_HOME=``home``, thread counts pinned for every library."""
    env = dict(os.environ, HEADSTART_HOME=str(home), PYTHONPATH=str(ROOT))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries a benchmark may time (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("headstart", "torch", "onnxruntime-gpu", "onnxruntime", "numpy", "scikit-learn", "faiss-cpu",
                 "sentence-transformers", "pillow", "ray"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def command_line() -> str:
    """The command that ran this benchmark, as typed from the project root."""
    import shlex

    script = Path(sys.argv[0]).resolve()
    first = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return " ".join(["python", shlex.quote(first), *map(shlex.quote, sys.argv[1:])])


def machine() -> dict[str, Any]:
    """What the numbers were measured on, when, by which command, and how busy the machine was."""
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "versions": versions(), "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": command_line(),
            "notes": os.environ.get(NOTES_ENV, ""),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_process(cmd: list[str], env: dict[str, str], poll_s: float = 0.2) -> dict[str, Any]:
    """Run ``cmd`` to completion: wall seconds, peak RSS and an RSS time series (every ``poll_s``).

    The peak is the kernel's high-water mark ``VmHWM`` of the child's own address space, read from
    /proc at each poll (it is monotonic, so spikes between polls are not missed; only growth in the
    last ``poll_s`` before exit could be). ``wait4``'s ``ru_maxrss`` is not used: Linux carries the
    pre-exec (forked parent) size into it, so a large parent inflates it.
    """
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    series: list[tuple[float, float]] = []
    hwm = [0.0]
    done = threading.Event()

    def poll() -> None:
        try:
            p = psutil.Process(proc.pid)
            status = Path(f"/proc/{proc.pid}/status")
            while not done.is_set():
                series.append((round(time.perf_counter() - start, 2), round(p.memory_info().rss / 2**20, 1)))
                hwm[0] = max(hwm[0], _vm_hwm_mb(status))
                done.wait(poll_s)
        except (psutil.Error, OSError):
            pass

    out: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: out.__setitem__(n, s.read()), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    poller = threading.Thread(target=poll, daemon=True)
    for t in (*readers, poller):
        t.start()
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    for t in (*readers, poller):
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"cmd": cmd, "rc": proc.returncode, "wall_s": round(wall, 3),
              "peak_rss_mb": round(hwm[0], 1), "rss_series_mb": series,
              "stdout": out["stdout"].decode(errors="replace"), "stderr": out["stderr"].decode(errors="replace")}
    if proc.returncode != 0:
        sys.stderr.write(result["stderr"][-3000:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return result


def _vm_hwm_mb(status: Path) -> float:
    """``VmHWM`` (peak RSS of the current address space) from /proc/<pid>/status, in MiB."""
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json``; machine facts are added when the payload has none."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = payload if "machine" in payload else {"machine": machine(), **payload}
    payload["machine"].setdefault("loadavg_end", loadavg())
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table of ``rows`` (missing cells blank)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
