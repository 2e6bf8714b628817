"""``headstart plugin new``: write a pip-installable plugin package that passes its own tests as generated.

One template per kind (head, reader, backbone). Each package has a ``pyproject.toml`` with the entry point in
group ``headstart``, a working example that imports only :mod:`headstart.sdk`, tests that use the
conformance kits, and a README. Generated names: distribution ``headstart-<name>``, module
``headstart_<name>``, and the plugin registers itself as ``<name>``.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from .errors import ConfigError

KINDS = ("head", "reader", "backbone")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "headstart-$dash"
version = "0.1.0"
description = "$description"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["headstart>=$version"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.headstart]
$name = "$module"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

_README = Template('''\
# headstart-$dash

$description — a [headstart](https://pypi.org/project/headstart/) $kind plugin.

```bash
pip install -e ".[test]"      # registers the plugin through the `headstart` entry-point group
headstart plugins             # lists `$name` with its version and status
python -m pytest              # the conformance kit and an end-to-end check
```

$usage

The plugin imports only `headstart.sdk`, the stable surface for plugins (see headstart's docs/plugins.md).
''')

_HEAD = Template('''\
"""A nearest-centroid head: each class is the mean of its training vectors; softmax over scaled cosines.

It follows scikit-learn's estimator contract through ``headstart.sdk.Head``: ``__init__`` only stores its
parameters, ``_fit`` sets fitted attributes ending in ``_``, and ``_state``/``_set_state`` give a safe
(safetensors + JSON) state, so ``headstart train -o model/`` saves it without pickle.
"""

from __future__ import annotations

import numpy as np

from headstart.sdk import ConfigError, Head, HeadSpec, hookimpl


class $cls(Head):
    """Nearest class centroid on unit-norm features; ``temperature`` sharpens the probabilities."""

    def __init__(self, temperature: float = 0.1) -> None:
        self.temperature = temperature

    def _fit(self, X: np.ndarray, y_idx: np.ndarray) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"$name: temperature must be > 0, got {self.temperature!r}",
                              hint="use a small positive number such as 0.1")
        k = len(self.classes_)
        centroids = np.stack([X[y_idx == i].mean(axis=0) for i in range(k)])
        self.centroids_ = (centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
                           ).astype(np.float32)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        logits = (X @ self.centroids_.T) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def _state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Fitted attributes to save (classes_ and n_features_in_ are saved by Head itself)."""
        return {"centroids": self.centroids_}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.centroids_ = np.asarray(arrays["centroids"], dtype=np.float32)


@hookimpl
def register_heads(register):
    register(HeadSpec(name="$name", factory=$cls, description="$description"))
''')

_HEAD_TEST = Template('''\
"""The conformance kit, then a real train -> eval -> predict on cached features through the public API."""

import numpy as np

import headstart
from headstart.sdk import check_head

from $module import $cls


def test_conformance():
    report = check_head($cls)
    assert report["format"] == "safetensors"


def test_train_eval_predict_round_trip(tmp_path, headstart_home):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16))
    X = np.concatenate([c + 0.3 * rng.standard_normal((30, 16)) for c in centres]).astype(np.float32)
    y = ["a"] * 30 + ["b"] * 30 + ["c"] * 30
    data = headstart.FeatureSet.from_arrays(X, y)
    result = headstart.train(data, "$name", out=tmp_path / "model")
    assert result.metrics["accuracy"] >= 0.9
    assert headstart.evaluate(tmp_path / "model", data)["accuracy"] >= 0.9
    assert headstart.load_model(tmp_path / "model").predict(data).labels == y
''')

_READER = Template('''\
"""A reader for ``.$ext`` files: one text item per line, ``label<TAB>text`` (lines without a tab have no label).

Readers yield :class:`headstart.sdk.Item` objects keyed by their content (``Item.make``), validate what they
can when the source is opened (so a bad file fails before any embedding), and turn a bad line into a
per-item error (``Item.failed``) instead of stopping the job.
"""

from __future__ import annotations

import os
from typing import Iterator

from headstart.sdk import Item, ReaderError, ReaderOptions, ReaderSpec, hookimpl


class $cls:
    """An opened ``.$ext`` file."""

    modality = "text"

    def __init__(self, path: str, options: ReaderOptions) -> None:
        if not os.path.isfile(path):
            raise ReaderError(f"$name: {path} is not a file", hint="pass the path of an existing .$ext file")
        self.path, self.options = path, options
        with open(path, "rb") as fh:
            self.has_labels = options.labelled is not False and any(b"\\t" in line for line in fh)

    def __iter__(self) -> Iterator[Item]:
        errors = "replace" if self.options.encoding_errors == "replace" else "strict"
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                ref = f"{self.path}:line {number}"
                try:
                    line = raw.decode("utf-8", errors).rstrip("\\r\\n")
                except UnicodeDecodeError as exc:
                    yield Item.failed(ref, f"not UTF-8 at byte {exc.start}", "text", raw=raw)
                    continue
                if not line.strip():
                    continue
                label, _, text = line.partition("\\t") if "\\t" in line else (None, "", line)
                yield Item.make(ref, text, "text", label=label if self.has_labels else None)

    def estimate_count(self) -> int | None:
        with open(self.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())


def open_$name(source: str, options: ReaderOptions) -> $cls:
    return $cls(os.fspath(source), options)


@hookimpl
def register_readers(register):
    register(ReaderSpec("$name", open_$name, "$description", extensions=(".$ext",), priority=10))
''')

_READER_TEST = Template('''\
"""The reader conformance kit on a sample file, then a real `headstart embed` of it in a subprocess."""

import json
import subprocess
import sys

from headstart.sdk import ReaderOptions, check_reader

from $module import open_$name, register_readers

SAMPLE = "greeting\\thello there\\nfarewell\\tgoodbye now\\ngreeting\\tgood morning\\n"


def _spec():
    specs = []
    register_readers(register=specs.append)
    return specs[0]


def test_conformance(tmp_path):
    path = tmp_path / "sample.$ext"
    path.write_text(SAMPLE)
    report = check_reader(_spec(), str(path), expect_items=3, expect_labels=True)
    assert report["labels"] == ["farewell", "greeting"]


def test_unlabelled_lines_have_no_label(tmp_path):
    path = tmp_path / "plain.$ext"
    path.write_text("just text\\nmore text\\n")
    items = list(open_$name(str(path), ReaderOptions()))
    assert [i.label for i in items] == [None, None]


def test_embed_reads_it(tmp_path, headstart_home):
    path = tmp_path / "sample.$ext"
    path.write_text(SAMPLE)
    result = subprocess.run([sys.executable, "-m", "headstart", "embed", str(path), "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 3 and summary["failed"] == 0, summary
''')

_BACKBONE = Template('''\
"""A small numeric backbone: rows of 8 floats -> a 32-d unit vector, through a fixed-seed PyTorch network.

A backbone plugin registers a :class:`headstart.sdk.BackboneSpec`. With ``build_torch`` headstart exports
the module to ONNX once, checks the export against PyTorch (the parity gate) and runs it through
onnxruntime; replace the network (and ``weights``: the files whose bytes identify your pretrained weights)
with your own model. Keep torch imports inside functions: registering must stay cheap.
"""

from __future__ import annotations

from headstart.sdk import BackboneSpec, NumericPreprocessing, hookimpl

WIDTH, DIM = 8, 32


def build_network():
    import torch

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.proj = torch.nn.Linear(WIDTH, 64)
            self.out = torch.nn.Linear(64, DIM)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

        def forward(self, values):
            h = torch.nn.functional.gelu(self.proj(values))
            return torch.nn.functional.normalize(self.out(h), dim=-1)

    return Network()


SPEC = BackboneSpec(
    name="$name",
    modality="numeric",
    source="$module (random fixed-seed weights)",
    preprocessing=NumericPreprocessing(input_name="values", shape=(WIDTH,), dtype="float32"),
    dim=DIM,
    pooling="none",
    normalize=True,
    description="$description",
    build_torch=build_network,
)


@hookimpl
def register_backbones(register):
    register(SPEC)
''')

_BACKBONE_TEST = Template('''\
"""The backbone conformance kit (export, parity gate, probes), then a real `headstart embed` with it."""

import json
import subprocess
import sys

import numpy as np

from headstart.sdk import check_backbone

from $module import DIM, SPEC


def test_conformance():
    report = check_backbone(SPEC)
    assert report["dim"] == DIM
    assert report["parity"]["min_cosine"] >= 0.9999


def test_embed_with_it(tmp_path, headstart_home):
    rows = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    result = subprocess.run([sys.executable, "-m", "headstart", "embed", str(tmp_path / "rows.npy"),
                             "-b", "$name", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == 20
''')

_USAGE = {
    "head": "Then: `headstart train data.csv --head $name -o model/`, `headstart eval model/ test.csv`.",
    "reader": "Then: `headstart embed data.$ext` (or `--reader $name` for files with another ending).",
    "backbone": "Then: `headstart embed rows.npy -b $name`, and `headstart train rows.parquet -b $name ...`.",
}
_DESCRIPTION = {"head": "nearest class centroid (cosine)", "reader": "label<TAB>text lines",
                "backbone": "a small fixed-seed numeric encoder (8 floats -> 32-d)"}
_FILES = {"head": (_HEAD, _HEAD_TEST), "reader": (_READER, _READER_TEST), "backbone": (_BACKBONE, _BACKBONE_TEST)}


def new_plugin(kind: str, name: str, out: str | Path | None = None) -> Path:
    """Write a ``kind`` plugin package called ``name`` into ``out`` (default ``./headstart-<name>``)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown plugin kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ConfigError(f"plugin name {name!r} is not usable",
                          hint="use 1-40 lowercase letters, digits and '_', starting with a letter")
    dash = name.replace("_", "-")
    root = Path(out) if out is not None else Path(f"headstart-{dash}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} already exists and is not an empty folder",
                          hint="choose another -o folder, or remove it first")
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("headstart")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        installed = "0.1"
    module = f"headstart_{name}"
    values = {"name": name, "dash": dash, "module": module, "kind": kind, "ext": name.replace("_", ""),
              "cls": "".join(part.capitalize() for part in name.split("_")) + kind.capitalize(),
              "description": _DESCRIPTION[kind], "version": installed.split("+")[0]}
    values["usage"] = Template(_USAGE[kind]).substitute(values)
    code, test = _FILES[kind]
    files = {
        "pyproject.toml": _PYPROJECT.substitute(values),
        "README.md": _README.substitute(values),
        f"{module}/__init__.py": code.substitute(values),
        f"tests/test_{name}.py": test.substitute(values),
        "tests/conftest.py": '"""The headstart_home fixture comes from headstart\'s pytest plugin (installed with it)."""\n',
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
