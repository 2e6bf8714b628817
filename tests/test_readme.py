"""The README's main job runs as written, on the embedded default backbone."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main_job_command() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- main-job -->\s*```bash\n(.+?)\n```", text, re.S)
    assert match, "README.md lost its main-job block"
    return match.group(1).strip()


def test_readme_main_job_trains_evaluates_and_predicts(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    result = subprocess.run(main_job_command(), shell=True, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accuracy" in result.stdout
    assert (tmp_path / "support-model" / "manifest.json").exists()
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    new = (ROOT / "examples" / "support-tickets" / "new.txt").read_text().splitlines()
    assert len(rows) == len(new)
    # new.txt holds one ticket of each class, in the order billing, shipping, technical, account, feedback
    assert [r["label"] for r in rows] == ["billing", "shipping", "technical", "account", "feedback"]


def readme_test_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-commands -->\s*```bash\n(.+?)\n```", text, re.S)
    assert match, "README.md lost its test-commands block"
    return [line.split("#", 1)[0].strip() for line in match.group(1).splitlines() if line.split("#", 1)[0].strip()]


def test_ci_runs_the_readme_test_commands_including_the_slow_tests():
    """.ci/run ends with README's test commands, in order; the slow tests are among them and exist."""
    commands = readme_test_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert ci[-len(commands):] == commands, (ci[-len(commands):], commands)
    assert "python -m pytest -m slow" in commands and "set -euo pipefail" in ci
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow", "-p",
                                "no:cacheprovider", str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT,
                               timeout=300)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    assert len([line for line in collected.stdout.splitlines() if "::" in line]) >= 3  # the long checks exist
