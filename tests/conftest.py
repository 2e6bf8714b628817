"""Shared test setup: every test runs against a store root under pytest's tmp dir, never the user's cache.

``session_home`` is shared by the whole session so expensive exports (MiniLM,
EfficientNet) are made once; tests that need an empty root use ``headstart_home``
(from the plugin test kit) instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("session-home")
    return home


@pytest.fixture(scope="module", autouse=True)
def _headstart_environment_restored():
    """No module may leave a HEADSTART_* variable changed for the next (a fixture setting os.environ directly)."""
    before = {k: v for k, v in os.environ.items() if k.startswith("HEADSTART_")}
    yield
    after = {k: v for k, v in os.environ.items() if k.startswith("HEADSTART_")}
    assert after == before, f"this module left os.environ changed: {before} -> {after}"


@pytest.fixture(autouse=True)
def _default_home(session_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point HEADSTART_HOME at the session root unless a test picks its own."""
    if "HEADSTART_HOME" not in os.environ or not os.environ["HEADSTART_HOME"].startswith(str(session_home.parent)):
        monkeypatch.setenv("HEADSTART_HOME", str(session_home))
    from headstart.engine.plugins import set_engine

    set_engine(None)


@pytest.fixture()
def home(headstart_home: Path) -> Path:
    """An empty store root for this test (``HEADSTART_HOME``); modules that need another kind define their own."""
    return headstart_home


@pytest.fixture
def env_home(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``HEADSTART_HOME`` set to the home of the module's ``data`` fixture (its ``"home"`` entry), with a fresh
    engine before and after the test (the few-shot modules share one home across their tests)."""
    monkeypatch.setenv("HEADSTART_HOME", str(data["home"]))
    from headstart.engine.plugins import set_engine

    set_engine(None)
    yield data["home"]
    set_engine(None)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``onnx:`` one MatMul 16 → 384 + L2 norm over a 16-float column (the scale tests' backbone)."""
    from headstart.engine.testing.tiny_backbones import projection_backbone

    return "onnx:" + str(projection_backbone(tmp_path_factory.mktemp("backbone"), width=16, dim=384, seed=3,
                                             name="tiny16"))
