"""headstart: embed a dataset once with a frozen ONNX backbone, train heads on cached features.

The public API. Importing this module is cheap: heavy libraries (torch, onnxruntime,
faiss, scikit-learn) load only when a function that needs them runs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import *  # noqa: F401,F403 - the exception hierarchy is public
from .errors import HeadstartError
from .hookspecs import hookimpl
from .plugins import Engine, get_engine

try:
    from importlib.metadata import version as _version

    __version__ = _version("headstart")
except Exception:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

# name -> "module:attribute", resolved on first access
_LAZY = {
    "export": "engine.backbones.export:export",
    "embed": "engine.embed.pipeline:embed",
    "FeatureStore": "engine.store.features:FeatureStore",
    "train": "engine.train.api:train",
    "sweep": "engine.train.api:sweep",
    "evaluate": "engine.train.api:evaluate",
    "predict": "engine.train.api:predict",
    "load_model": "engine.train.model:load_model",
    "finetune": "engine.train.finetune:finetune",
    "BackboneSpec": "engine.backbones.spec:BackboneSpec",
    "HeadSpec": "engine.heads.spec:HeadSpec",
    "ReaderSpec": "engine.embed.items:ReaderSpec",
    "Settings": "engine.config:Settings",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'engine' has no attribute '{name}'")
    module, attr = target.split(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Engine", "HeadstartError", "get_engine", "hookimpl", "__version__", *_LAZY]
