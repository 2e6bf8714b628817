"""int8 text bundles quantised whole: every MatMul and Attention of the transformer, gated on the task.

The backbone's own int8 export (``headstart embed --precision int8``) keeps a few layers fp32 because its
gate asks for embeddings close to fp32 on every probe text (the empty text included). A bundle is gated on
what it is for instead: label agreement and accuracy on the model's validation split (:mod:`.gate`). So an
int8 text bundle first tries the fp32 backbone with every one of its MatMul and Attention ops quantised
(dynamic int8, weights per channel; the head and the tokenizer stay as they are); if that misses the
accuracy gate, the build falls back to the backbone's int8 export. Measured on the support-ticket model
(docs/deploy.md, Speed): 1.4x faster for one text than the backbone's int8 export, label agreement 1.0.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

#: The op types quantised in a whole-int8 text bundle.
WHOLE_INT8_OPS = ("MatMul", "Attention")
WHOLE_INT8_METHOD = ("dynamic int8, weights per channel in 7 bits, every MatMul and Attention of the backbone "
                     "(bundle-level)")


def quantize_backbone_nodes(model: Any, backbone_nodes: set[str], workdir: Path) -> tuple[Any, list[str]]:
    """``model`` (an assembled bundle, ModelProto) with the nodes named in ``backbone_nodes`` whose op is in
    :data:`WHOLE_INT8_OPS` quantised; returns (the int8 ModelProto, the names quantised)."""
    import onnx

    from ..backbones.quantize import quantize_dynamic_int8

    chosen = [n.name for n in model.graph.node if n.op_type in WHOLE_INT8_OPS and n.name in backbone_nodes]
    workdir.mkdir(parents=True, exist_ok=True)  # the bundle's folder: written there next anyway
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".headstart-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model.SerializeToString())
        quantize_dynamic_int8(src, dst, WHOLE_INT8_OPS, only=chosen)
        quantized = onnx.load(str(dst))
    return quantized, chosen


def backbone_node_names(path: Path) -> set[str]:
    """Names of the nodes of the backbone graph at ``path`` (the bundle keeps them when it merges parts)."""
    import onnx

    return {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}
