"""``headstart.load_bundle`` in a fresh virtual environment that holds only numpy, onnxruntime-gpu and
onnxruntime-extensions (and headstart's own source): no torch, faiss, scikit-learn, pyarrow or pluggy.

The venv is made by ``python -m venv`` and gets the three distributions this project runs (the same
files: linked from where they are installed, with their metadata), so the test needs no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from headstart.engine.bundle.build import build_bundle
from headstart.engine.train.api import predict, train

# a hang guard only: the module fixtures train several heads on MiniLM / EfficientNet features and build bundles
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
NEW = ROOT / "examples" / "support-tickets" / "new.txt"
DISTRIBUTIONS = ("numpy", "onnxruntime-gpu", "onnxruntime-extensions")
ABSENT = ("torch", "faiss", "sklearn", "pyarrow", "pluggy", "transformers", "tokenizers", "PIL")

RUN = """
import importlib.util, json, sys
absent = {absent!r}
found = [m for m in absent if importlib.util.find_spec(m) is not None]
import headstart
bundle = headstart.load_bundle(sys.argv[1])
texts = [line.rstrip("\\n") for line in open(sys.argv[2], encoding="utf-8") if line.strip()]
labels, proba = bundle.predict(texts)
print(json.dumps({{"found": found, "labels": labels, "shape": list(proba.shape), "classes": bundle.classes,
                   "loaded": sorted(m for m in absent if m in sys.modules), "prefix": sys.prefix}}))
"""


def _link_distribution(name: str, site: Path) -> None:
    """Link the installed files of distribution ``name`` (top-level packages, libs, metadata) into ``site``."""
    dist = metadata.distribution(name)
    base = Path(dist.locate_file(""))
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in sorted(tops):
        target = site / top
        if not target.exists() and not top.endswith(".py") and top not in ("bin", "__pycache__"):
            os.symlink(base / top, target)


def _headstart_source(site: Path) -> None:
    """headstart's installed layout: engine/toplevel as ``headstart``, engine/ as ``headstart.engine``."""
    package = site / "headstart"
    package.mkdir()
    for file in (ROOT / "engine" / "toplevel").glob("*.py"):
        os.symlink(file, package / file.name)
    os.symlink(ROOT / "engine", package / "engine")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fresh-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name in DISTRIBUTIONS:
        _link_distribution(name, site)
    _headstart_source(site)
    return python


def test_load_bundle_runs_where_only_numpy_and_onnxruntime_are_installed(fresh_venv: Path, tmp_path: Path,
                                                                         session_home: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(session_home))
        train(str(TRAIN), "linear", backbone="minilm-l6", out=tmp_path / "model", progress=False)
        build_bundle(tmp_path / "model", tmp_path / "model.onnx")
        expected = predict(tmp_path / "model", str(NEW))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    done = subprocess.run([str(fresh_venv), "-c", RUN.format(absent=ABSENT), str(tmp_path / "model.onnx"), str(NEW)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["found"] == [] and got["loaded"] == []  # nothing heavy exists there, let alone gets imported
    assert Path(got["prefix"]).resolve() == fresh_venv.parent.parent.resolve()
    assert got["labels"] == [str(v) for v in expected.labels] and got["shape"] == [len(expected.labels), 5]
