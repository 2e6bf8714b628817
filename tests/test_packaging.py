"""Packaging: one import name (`headstart`), and the engine never reaches into the built-in plugins."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _imported_names(path: Path) -> set[str]:
    """Every module name a file imports at run time: import statements (any depth, function-level ones
    included, relative ones resolved) and string arguments to importlib.import_module / __import__; imports
    under ``if TYPE_CHECKING:`` never run and are left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in {"import_module", "__import__"}:
                names.add(node.args[0].value)
    return names


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[:2] == ("engine", "toplevel"):
        parts = ["headstart", *rel.parts[2:]]
    else:
        parts = ["headstart", *rel.parts]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_every_package_folder_is_installed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p) for top in ("engine", "plugins") for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk == listed, f"pyproject packages differ from the folders: missing {on_disk - listed}, " \
                              f"extra {listed - on_disk}"


def test_the_wheel_installs_only_headstart_at_the_top_level(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("headstart-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        top_level = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/top_level.txt"))).decode()
        assert "headstart/engine/store/features.py" in zf.namelist()
        assert "headstart/plugins/heads/linear.py" in zf.namelist()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"headstart"}
    assert top_level.split() == ["headstart"]


def test_entry_points_and_scripts_name_headstart_modules():
    project = _pyproject()["project"]
    targets = [*project["entry-points"]["headstart"].values(), *project["entry-points"]["pytest11"].values(),
               *project["scripts"].values()]
    assert targets and all(t.startswith("headstart.") for t in targets), targets


def test_the_engine_never_imports_the_plugins():
    offenders = {}
    for path in (ROOT / "engine").rglob("*.py"):
        bad = sorted(n for n in _imported_names(path) if n == "headstart.plugins" or n.startswith("headstart.plugins.")
                     or n.split(".")[0] in {"plugins", "engine"})
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders


def test_the_import_checker_sees_every_form(tmp_path, monkeypatch):
    """The checker above must catch `from headstart import plugins`, relative imports and importlib strings."""
    probe = ROOT / "engine" / "store" / "_probe_for_test.py"
    probe.write_text("from headstart import plugins\nfrom ...plugins import heads\nimport importlib\n"
                     "importlib.import_module('headstart.plugins.heads.linear')\n")
    try:
        names = _imported_names(probe)
    finally:
        probe.unlink()
    assert {"headstart.plugins", "headstart.plugins.heads", "headstart.plugins.heads.linear"} <= names


def _engine_import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "engine").rglob("*.py")}
    return {name: {n for n in _imported_names(path) if n in modules and n != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_engine_has_no_import_cycles():
    """Function-level imports count: a cycle hidden inside a function is still a cycle in the design."""
    assert _cycles(_engine_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_built_in_plugins_import_only_the_sdk():
    """The built-ins prove the SDK is enough: they import headstart.sdk and their own modules, nothing else."""
    offenders = {}
    for path in (ROOT / "plugins").rglob("*.py"):
        bad = sorted(n for n in _imported_names(path) if n.startswith("headstart")
                     and not n.startswith(("headstart.sdk", "headstart.plugins")))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders
