"""The plugin author's kit: `headstart plugin new` packages install, pass their own tests as generated, and
work end to end from the CLI; the SDK is enough for the built-ins; the conformance kits catch broken plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.scaffold import new_plugin
from headstart.engine.testing.distributions import PluginDistribution, PluginVenv
from headstart.sdk import ConfigError, ReaderOptions, ReaderSpec, check_backbone, check_reader


def _install(tmp_path: Path, *kinds_names: tuple[str, str]) -> tuple[PluginVenv, dict[str, Path]]:
    venv = PluginVenv.create(tmp_path / "venv")
    roots = {name: new_plugin(kind, name, tmp_path / f"headstart-{name}") for kind, name in kinds_names}
    venv.pip_install(*[PluginDistribution(name=f"headstart-{n}", root=r, module=f"headstart_{n}")
                       for n, r in roots.items()])
    return venv, roots


def _pytest_in(venv: PluginVenv, root: Path, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root,
                          capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
                                                                           "HEADSTART_HOME": str(home)})


@pytest.mark.parametrize("kind", ["head", "reader", "backbone"])
def test_generated_plugin_installs_and_passes_its_own_tests(kind: str, tmp_path: Path, headstart_home: Path):
    name = f"demo_{kind}"
    venv, roots = _install(tmp_path, (kind, name))
    result = _pytest_in(venv, roots[name], headstart_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout
    listing = json.loads(venv.run("plugins", "--json").stdout)["plugins"]
    record = next(r for r in listing if r["name"] == name)
    assert record["status"] == "ok", record
    catalog = {"head": "heads", "reader": None, "backbone": "backbones"}[kind]
    if catalog:
        names = {entry["name"] for entry in json.loads(venv.run(catalog, "--json").stdout)}
        assert name in names


def test_generated_head_and_backbone_work_from_the_cli(tmp_path: Path, headstart_home: Path):
    """train -> eval -> predict through the CLI with a generated backbone and a generated head together."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    venv, _ = _install(tmp_path, ("head", "kit_head"), ("backbone", "kit_backbone"))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 8)) * 2
    labels = np.repeat(["low", "high"], 60)
    rows = np.concatenate([c + 0.3 * rng.standard_normal((60, 8)) for c in centres]).astype(np.float32)
    table = pa.table({"values": pa.array(list(rows), type=pa.list_(pa.float32(), 8)), "label": labels})
    pq.write_table(table.slice(0, 120), tmp_path / "train.parquet")
    env = {"HEADSTART_HOME": str(headstart_home)}
    train = venv.run("train", str(tmp_path / "train.parquet"), "-b", "kit_backbone", "--head", "kit_head",
                     "-o", str(tmp_path / "model"), "--json", env=env, timeout=600)
    assert train.returncode == 0, train.stderr
    evaluation = venv.run("eval", str(tmp_path / "model"), str(tmp_path / "train.parquet"), "--json", env=env)
    assert evaluation.returncode == 0, evaluation.stderr
    assert json.loads(evaluation.stdout)["accuracy"] >= 0.9
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["head"]["format"] == "safetensors"


def test_plugin_new_refuses_bad_names_and_used_folders(tmp_path: Path):
    with pytest.raises(ConfigError, match="not usable"):
        new_plugin("head", "Bad-Name", tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown plugin kind"):
        new_plugin("widget", "ok", tmp_path / "y")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        new_plugin("head", "ok", tmp_path / "used")
    assert (tmp_path / "used" / "file").read_text() == "mine"
    cli = subprocess.run([sys.executable, "-m", "headstart", "plugin", "new", "head", "Bad-Name", "-o",
                          str(tmp_path / "z")], capture_output=True, text=True)
    assert cli.returncode == 2 and "error:" in cli.stderr and "Traceback" not in cli.stderr


def test_check_reader_catches_a_reader_that_keys_items_by_path(tmp_path: Path):
    from headstart.sdk import Item

    class PathKeyed:
        modality, has_labels = "text", False

        def __init__(self, path):
            self.path = path

        def __iter__(self):
            yield Item(ref=self.path, payload="hello", key="not-a-content-key", modality="text")

        def estimate_count(self):
            return 1

    def open_bad(source: str, options: ReaderOptions):
        return PathKeyed(source)

    sample = tmp_path / "s.bad"
    sample.write_text("hello")
    with pytest.raises(AssertionError, match="content key"):
        check_reader(ReaderSpec("bad", open_bad, extensions=(".bad",)), str(sample))


def test_check_reader_catches_raw_exceptions_on_a_missing_source(tmp_path: Path):
    from headstart.sdk import Item

    class Lines:
        modality, has_labels = "text", False

        def __init__(self, path):
            self.lines = Path(path).read_text().splitlines()  # FileNotFoundError leaks for a missing path

        def __iter__(self):
            for n, line in enumerate(self.lines):
                yield Item.make(f"line {n + 1}", line, "text")

        def estimate_count(self):
            return len(self.lines)

    sample = tmp_path / "s.lines"
    sample.write_text("a\nb\n")
    with pytest.raises(AssertionError, match="FileNotFoundError"):
        check_reader(ReaderSpec("lines", lambda s, o: Lines(s), extensions=(".lines",)), str(sample))


def test_check_backbone_catches_batch_dependent_pooling(tmp_path: Path):
    """A numeric backbone whose output depends on the other items of its batch fails the kit."""
    from headstart.sdk import BackboneSpec, NumericPreprocessing

    def build():
        import torch

        class BatchMean(torch.nn.Module):
            def forward(self, values):
                centred = values - values.mean(dim=0, keepdim=True)  # leaks across the batch
                return torch.nn.functional.normalize(torch.cat([centred, values], dim=-1), dim=-1)

        return BatchMean()

    spec = BackboneSpec(name="batchy", modality="numeric", source="test", dim=8, pooling="none",
                        preprocessing=NumericPreprocessing(input_name="values", shape=(4,)), build_torch=build)
    with pytest.raises(AssertionError, match="depends on its batch"):
        check_backbone(spec, home=str(tmp_path))


def test_check_backbone_catches_a_false_normalisation_claim(tmp_path: Path):
    from headstart.sdk import BackboneSpec, NumericPreprocessing

    def build():
        import torch

        class Doubler(torch.nn.Module):
            def forward(self, values):
                return values * 2.0

        return Doubler()

    spec = BackboneSpec(name="doubler", modality="numeric", source="test", dim=4, pooling="none", normalize=True,
                        preprocessing=NumericPreprocessing(input_name="values", shape=(4,)), build_torch=build)
    with pytest.raises(AssertionError, match="says it normalises"):
        check_backbone(spec, home=str(tmp_path))
    report = check_backbone(BackboneSpec(name="doubler2", modality="numeric", source="test", dim=4, pooling="none",
                                         normalize=False, build_torch=build,
                                         preprocessing=NumericPreprocessing(input_name="values", shape=(4,))),
                            home=str(tmp_path))
    assert report["probes"] == 16 and report["parity"]["min_cosine"] >= 0.9999


def _doc_example(section: str) -> dict:
    """Run the first python block under ``## <section>`` of docs/plugins.md; return its namespace."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    namespace: dict = {"__name__": f"docs_example_{section.replace(' ', '_')}"}
    exec(compile(code, f"docs/plugins.md ({section})", "exec"), namespace)
    return namespace


def test_the_docs_head_example_passes_the_kit():
    from headstart.sdk import check_head

    assert check_head(_doc_example("A head")["CentroidHead"])["format"] == "safetensors"


def test_the_docs_reader_example_passes_the_kit(tmp_path: Path):
    namespace = _doc_example("A reader")
    specs = []
    namespace["register_readers"](register=specs.append)
    sample = tmp_path / "sample.tab"
    sample.write_text("greeting\thello\nfarewell\tbye\nbroken line\n")
    report = check_reader(specs[0], str(sample), expect_items=3, expect_labels=True)
    assert report["errors"] == 1 and report["labels"] == ["farewell", "greeting"]


def test_the_docs_backbone_example_passes_the_kit(tmp_path: Path):
    report = check_backbone(_doc_example("A backbone")["SPEC"], home=str(tmp_path))
    assert report["dim"] == 32
