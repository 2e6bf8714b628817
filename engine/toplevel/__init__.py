"""headstart: embed a dataset once with a frozen ONNX backbone, train heads on cached features.

The public API (``import headstart``); this package's source lives in ``engine/toplevel/`` and is installed as
the top-level ``headstart`` package, with ``engine/`` as ``headstart.engine`` and ``plugins/`` as
``headstart.plugins``. Importing this module is cheap: heavy libraries (torch, onnxruntime,
faiss, scikit-learn) load only when a function that needs them runs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .engine.errors import *  # noqa: F401,F403 - the exception hierarchy is public
from .engine.errors import HeadstartError

try:
    from importlib.metadata import version as _version

    __version__ = _version("headstart")
except Exception:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

# name -> "module:attribute", resolved on first access (the plugin machinery too: pluggy is not needed to
# import ``headstart.load_bundle`` where only numpy + onnxruntime are installed)
_LAZY = {
    "hookimpl": "headstart.engine.hookspecs:hookimpl",
    "Engine": "headstart.engine.plugins:Engine",
    "get_engine": "headstart.engine.plugins:get_engine",
    "bundle": "headstart.engine.bundle.build:build_bundle",
    "load_bundle": "headstart.engine.bundle.loader:load_bundle",
    "export": "headstart.engine.backbones.export:export",
    "embed": "headstart.engine.embed.pipeline:embed",
    "FeatureStore": "headstart.engine.store.features:FeatureStore",
    "train": "headstart.engine.train.api:train",
    "sweep": "headstart.engine.train.api:sweep",
    "evaluate": "headstart.engine.train.api:evaluate",
    "predict": "headstart.engine.train.api:predict",
    "load_model": "headstart.engine.train.model:load_model",
    "finetune": "headstart.engine.train.finetune:finetune",
    "BackboneSpec": "headstart.engine.backbones.spec:BackboneSpec",
    "HeadSpec": "headstart.engine.heads.spec:HeadSpec",
    "ReaderSpec": "headstart.engine.embed.items:ReaderSpec",
    "FeatureSet": "headstart.engine.heads.features:FeatureSet",
    "Settings": "headstart.engine.config:Settings",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'headstart' has no attribute '{name}'")
    module, attr = target.split(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["HeadstartError", "__version__", *_LAZY]
