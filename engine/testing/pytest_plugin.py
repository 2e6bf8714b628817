"""pytest plugin (entry point ``pytest11``): headstart's plugin test kit fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest


@pytest.fixture
def headstart_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store root for this test; ``HEADSTART_HOME`` points at it."""
    home = tmp_path / "headstart-home"
    home.mkdir()
    monkeypatch.setenv("HEADSTART_HOME", str(home))
    return home


@pytest.fixture
def headstart_engine(headstart_home: Path) -> Iterator[Any]:
    """A fresh engine (entry points loaded) over ``headstart_home``, the process default for the test."""
    from headstart.engine.config import Settings
    from headstart.engine.plugins import Engine, set_engine

    engine = Engine(Settings.from_env(home=headstart_home))
    previous = set_engine(engine)
    yield engine
    set_engine(previous)


@pytest.fixture
def register_plugin(headstart_engine: Any) -> Iterator[Callable[..., Any]]:
    """``register_plugin(obj, name=None)`` registers an in-process plugin for this test only."""
    names: list[str] = []

    def register(obj: Any, name: str | None = None, **kwargs: Any) -> Any:
        record = headstart_engine.register_plugin(obj, name, **kwargs)
        names.append(record.name)
        return record

    yield register
    for name in names:
        headstart_engine.unregister_plugin(name)


@pytest.fixture
def plugin_dist(tmp_path: Path) -> Callable[..., Any]:
    """``plugin_dist(name, code, entry_point=None)`` writes a plugin distribution under tmp_path."""
    from .distributions import build_plugin_distribution

    def build(name: str, code: str, **kwargs: Any):
        return build_plugin_distribution(tmp_path / "dists", name, code, **kwargs)

    return build


@pytest.fixture
def plugin_venv(tmp_path: Path):
    """A virtual environment that sees headstart (``--system-site-packages``)."""
    from .distributions import PluginVenv

    return PluginVenv.create(tmp_path / "venv")
