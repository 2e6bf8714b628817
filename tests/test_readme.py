"""The README's main job runs as written, on the embedded default backbone."""

from __future__ import annotations

import csv
import os
import re
import subprocess
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
