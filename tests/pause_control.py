"""The test side of headstart.engine.faultpoints: start a process that pauses at an event, wait for it there.

Waiting polls for the marker file the paused process writes (an observed event, never a fixed delay).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from headstart.engine.faultpoints import PAUSE_AT_ENV, PAUSE_DIR_ENV, marker_name


def pause_env(folder: Path, *points: str) -> dict[str, str]:
    """Environment variables making a process pause at ``points`` (``event`` or ``event#n``)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {PAUSE_AT_ENV: ",".join(points), PAUSE_DIR_ENV: str(folder)}


def _split(point: str) -> tuple[str, int]:
    event, _, n = point.partition("#")
    return event, int(n) if n else 1


def marker(folder: Path, point: str) -> Path:
    return folder / f"{marker_name(*_split(point))}.paused"


def wait_paused(folder: Path, point: str, proc: subprocess.Popen | None = None, timeout: float = 240) -> dict[str, Any]:
    """Wait until a process pauses at ``point``; return the marker (pid, details).

    Fails if ``proc`` ends first (it never reached the point) or after ``timeout`` seconds (a hang).
    """
    path = marker(folder, point)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process exited ({proc.returncode}) before pausing at {point}: {err[-2000:]!s}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no process paused at {point} within {timeout:.0f} s")
        time.sleep(0.01)
    return json.loads(path.read_text())


def kill_when_paused(folder: Path, point: str, proc: subprocess.Popen, timeout: float = 240) -> dict[str, Any]:
    """Wait until ``proc`` pauses at ``point`` (it must be the process paused there), SIGKILL it and reap it;
    return the marker. ``proc`` is killed and reaped whatever happens; its pipes are the caller's."""
    try:
        paused = wait_paused(folder, point, proc, timeout)
        assert paused["pid"] == proc.pid, (paused, proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        return paused
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def run_and_kill_at(cmd: list[str], folder: Path, point: str, env: dict[str, str] | None = None,
                    timeout: float = 240) -> tuple[dict[str, Any], int]:
    """Start ``cmd`` (with ``env`` over this environment) pausing at ``point``, SIGKILL it there and reap it
    (:func:`kill_when_paused`); return (the pause marker, its return code)."""
    proc = subprocess.Popen(cmd, env=env_with({**pause_env(folder, point), **(env or {})}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        return kill_when_paused(folder, point, proc, timeout), proc.returncode
    finally:
        proc.stderr.close()


def resume(folder: Path, point: str) -> None:
    """Let the process paused at ``point`` go on."""
    (folder / f"{marker_name(*_split(point))}.resume").touch()


def env_with(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
