"""The CLI shell: cheap imports, one-line errors, did-you-mean, listings."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "faiss", "sklearn", "transformers", "optimum", "PIL", "pyarrow")


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True, timeout=120,
                          **kwargs)


def _imported_modules(code: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    return {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}


def test_importing_the_cli_loads_no_heavy_library():
    modules = _imported_modules("import headstart.engine.cli")
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_help_and_plugin_loading_load_no_heavy_library():
    # Loading every plugin (as `headstart heads` does) must stay cheap too.
    modules = _imported_modules(
        "from headstart.engine.plugins import Engine; e = Engine(); e.catalog; from headstart.engine.cli import main; "
        "import contextlib, io; f = io.StringIO()\n"
        "with contextlib.redirect_stdout(f): main(['--help'])"
    )
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("embed", "train", "sweep", "eval", "predict", "finetune", "export", "backbones", "heads",
                    "plugins", "cache"):
        assert f"  {command} " in result.stdout


def test_unknown_head_is_one_line_with_a_suggestion():
    result = _run("heads", "--show", "lineer")
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert first == "error: unknown head 'lineer'; did you mean 'linear'?"
    assert "Traceback" not in result.stderr


def test_unknown_backbone_suggests_the_closest():
    result = _run("backbones", "--show", "minlm-l6")
    assert result.returncode == 2
    assert "did you mean 'minilm-l6'?" in result.stderr


def test_debug_shows_the_traceback():
    result = _run("--debug", "heads", "--show", "lineer")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_unknown_command_suggests_the_closest():
    result = _run("trian")
    assert result.returncode == 2 and "did you mean 'train'?" in result.stderr


def test_builtin_plugins_are_ok_and_registered_through_entry_points():
    result = _run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)["plugins"]}
    for name in ("minilm", "efficientnet", "hub", "onnx_file", "linear", "mlp", "sklearn", "knn", "readers",
                 "torch_finetune"):
        assert records[name]["status"] == "ok", records[name]
        assert records[name]["distribution"] == "headstart" and records[name]["builtin"]
        assert records[name]["hooks"], name
    heads = {h["name"] for h in json.loads(_run("heads", "--json").stdout)}
    assert {"linear", "mlp", "sklearn", "knn"} <= heads
    backbones = {b["name"] for b in json.loads(_run("backbones", "--json").stdout)}
    assert {"minilm-l6", "efficientnet-lite0"} <= backbones
