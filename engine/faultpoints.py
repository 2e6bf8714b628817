"""Pause points: let a test stop a process at a named event, then kill it there (or let it go on).

Product code calls :func:`pause_point` at the few moments a crash test cares about (a shard
written but not yet in the manifest, a manifest committed, a fine-tuning epoch checkpointed, a
Ray block received). Unless ``HEADSTART_TEST_PAUSE_AT`` is set, the call returns at once.

``HEADSTART_TEST_PAUSE_AT``: comma-separated ``event`` or ``event#n`` (the n-th time this process
reaches ``event``; default the first). ``HEADSTART_TEST_PAUSE_DIR``: a folder for the markers.
At a match the process creates ``<dir>/<event>#<n>.paused`` (JSON: pid and the call's details)
and blocks until ``<dir>/<event>#<n>.resume`` exists, or forever (until killed). The marker is
created exclusively: only the first process to reach a point pauses there, so a restarted or
resumed process (a Ray actor retried, a ``--resume`` run) goes through.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

PAUSE_AT_ENV = "HEADSTART_TEST_PAUSE_AT"
PAUSE_DIR_ENV = "HEADSTART_TEST_PAUSE_DIR"

_reached: Counter[str] = Counter()


def _targets(spec: str) -> set[tuple[str, int]]:
    out = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        event, _, n = part.partition("#")
        if not event or (n and not n.isdigit()):
            from .errors import ConfigError

            raise ConfigError(f"{PAUSE_AT_ENV}: cannot read {part!r}",
                              hint="use event or event#n (n >= 1), comma-separated; unset it outside tests")
        out.add((event, int(n) if n else 1))
    return out


def marker_name(event: str, n: int = 1) -> str:
    """The file name stem of the markers of the ``n``-th arrival at ``event``."""
    return f"{event}#{n}"


def pause_point(event: str, **detail: Any) -> None:
    """Block here when the environment asks this process to pause at ``event`` (see the module doc)."""
    spec = os.environ.get(PAUSE_AT_ENV)
    if not spec:
        return
    _reached[event] += 1
    n = _reached[event]
    if (event, n) not in _targets(spec):
        return
    folder = Path(os.environ.get(PAUSE_DIR_ENV) or ".")
    stem = marker_name(event, n)
    tmp = folder / f"{stem}.paused.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"pid": os.getpid(), "event": event, "n": n, **detail}, fh, default=str)
    try:
        os.link(tmp, folder / f"{stem}.paused")  # exclusive and whole: the marker appears complete, once
    except FileExistsError:
        return  # another process paused here first
    finally:
        os.unlink(tmp)
    resume = folder / f"{stem}.resume"
    while not resume.exists():
        time.sleep(0.01)
