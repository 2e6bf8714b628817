"""Join preprocessing, backbone and head graphs into one model with ``probabilities`` and ``label`` outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def assemble(pre: Any | None, backbone_path: Path, head: Any, output_name: str, metadata: dict[str, Any]) -> Any:
    """``pre`` (or None: the backbone's own inputs) -> backbone at ``backbone_path`` -> ``head``; metadata
    values that are not strings are stored as JSON."""
    import onnx
    from onnx import compose

    backbone = onnx.load(str(backbone_path))
    ir = backbone.ir_version
    for part in (pre, head):
        if part is not None:
            part.ir_version = ir
    if backbone.graph.output[0].name != output_name or len(backbone.graph.output) != 1:
        keep = [o for o in backbone.graph.output if o.name == output_name]
        del backbone.graph.output[:]
        backbone.graph.output.extend(keep)
    merged = compose.merge_models(backbone, head, io_map=[(output_name, "embedding")])
    if pre is not None:
        links = [(o.name, o.name) for o in pre.graph.output]
        merged = compose.merge_models(pre, merged, io_map=links)
    opsets: dict[str, int] = {}
    for o in merged.opset_import:  # merge_models repeats the default domain once per part
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    merged.graph.name = "headstart_bundle"
    merged.producer_name = "headstart"
    set_metadata(merged, metadata)
    return merged


def set_metadata(model: Any, metadata: dict[str, Any]) -> None:
    """Replace ``model``'s metadata_props with ``metadata`` (non-strings as JSON)."""
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=text))
