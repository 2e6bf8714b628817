"""Tiny real `onnx:` backbones for tests and benchmarks: a graph that costs almost nothing, so the engine's own
cost shows, with the `.headstart.json` sidecar that makes it a backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def projection_backbone(folder: str | Path, *, width: int = 16, dim: int = 384, seed: int = 0,
                        name: str = "tiny", description: str = "", weights: "Any" = None) -> Path:
    """Write ``<folder>/<name>.onnx``: numeric rows of ``width`` float32 → L2-normalised ``x @ W`` of ``dim``
    (one MatMul, ReduceL2, Div), and its sidecar (numeric, normalize=true). Returns the graph's path; use it
    as ``onnx:<path>``. ``weights``: the (width, dim) matrix W (default: standard normal from ``seed``)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = (np.random.default_rng(seed).standard_normal((width, dim)) if weights is None
               else np.asarray(weights)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceL2", ["h"], ["n"], axes=[1], keepdims=1),
             helper.make_node("Div", ["h", "n"], ["embedding"])]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", width])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", dim])],
                              [numpy_helper.from_array(weights, "w")])
    path = folder / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    sidecar = {"modality": "numeric", "dim": dim, "normalize": True,
               "preprocessing": {"input_name": "x", "shape": [width], "dtype": "float32"}}
    if description:
        sidecar["description"] = description
    path.with_suffix(".headstart.json").write_text(json.dumps(sidecar))
    return path
