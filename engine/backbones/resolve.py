"""Find a backbone by catalog name or alias, or build one on demand (``hf:...``, ``onnx:...``)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, UnknownNameError
from .spec import BackboneSpec


def _engine(engine: Any) -> Any:
    if engine is not None:
        return engine
    from ..plugins import get_engine

    return get_engine()


def resolve_backbone(ref: "str | BackboneSpec", engine: Any = None) -> BackboneSpec:
    """A registered name or alias, else the first ``resolve_backbone`` hook that claims ``ref``."""
    if isinstance(ref, BackboneSpec):
        return ref
    engine = _engine(engine)
    entry = engine.catalog.find("backbone", ref)
    if entry is not None:
        return entry.spec
    spec = engine.call_first("resolve_backbone", ref=ref, engine=engine)
    if spec is not None:
        return spec
    err = engine.catalog.unknown("backbone", ref)
    raise UnknownNameError(err.message, hint=f"{err.hint}; or use hf:<model id or folder> or onnx:<path>")


def default_backbone(modality: str, engine: Any = None) -> BackboneSpec:
    """The registered backbone marked ``default`` for ``modality`` (text: minilm-l6, image: efficientnet-lite0)."""
    engine = _engine(engine)
    for entry in engine.catalog.items("backbone"):
        if entry.spec.default and entry.spec.modality == modality:
            return entry.spec
    raise ConfigError(f"no default backbone is registered for {modality} items",
                      hint="pass a backbone explicitly (see `headstart backbones`)")
