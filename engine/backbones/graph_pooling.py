"""Append pooling and L2 normalisation to an exported encoder graph (e.g. optimum's ``last_hidden_state``).

Used for backbones whose ONNX graph comes from an exporter that stops at the token states: the appended
nodes compute exactly what :func:`headstart.engine.backbones.torch_modules.text_encoder` computes in PyTorch
(masked mean or CLS token, then ``x / max(||x||, 1e-12)``), so the parity gate compares like with like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import BackboneError

EPSILON_MASK = 1e-9
EPSILON_NORM = 1e-12


def append_pooling(src: str | Path, dst: str | Path, *, pooling: Literal["mean", "cls"], normalize: bool,
                   output_name: str = "embedding", hidden: str = "last_hidden_state",
                   mask: str | None = "attention_mask") -> None:
    """Read the graph at ``src``, pool its ``hidden`` output ([batch, tokens, dim]) into ``output_name``
    ([batch, dim]) and write it to ``dst`` (one file, weights inline). ``mask``: the input whose zeros mark
    padding for ``mean`` pooling (``None``: every token counts, as for image patches)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if hidden not in outputs:
        raise BackboneError(f"the exported graph {src} has no output '{hidden}' (outputs: {sorted(outputs)})",
                            hint="export the model for feature extraction (token states)")
    if pooling not in ("mean", "cls"):
        raise BackboneError(f"pooling {pooling!r} cannot be appended to a graph", hint="use mean or cls")
    nodes, inits = [], []

    def const(name: str, value, dtype) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    pooled = "hs_pooled"
    if pooling == "cls":
        nodes.append(helper.make_node("Gather", [hidden, const("hs_cls_index", 0, np.int64)], [pooled], axis=1))
    elif mask is None:
        nodes.append(helper.make_node("ReduceMean", [hidden], [pooled], axes=[1], keepdims=0))
    else:
        nodes += [
            helper.make_node("Unsqueeze", [mask, const("hs_last_axis", [-1], np.int64)], ["hs_mask3"]),
            helper.make_node("Cast", ["hs_mask3"], ["hs_maskf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [hidden, "hs_maskf"], ["hs_masked"]),
            helper.make_node("ReduceSum", ["hs_masked", const("hs_token_axis", [1], np.int64)], ["hs_sum"],
                             keepdims=0),
            helper.make_node("ReduceSum", ["hs_maskf", "hs_token_axis"], ["hs_count"], keepdims=0),
            helper.make_node("Max", ["hs_count", const("hs_eps_mask", EPSILON_MASK, np.float32)], ["hs_count_c"]),
            helper.make_node("Div", ["hs_sum", "hs_count_c"], [pooled]),
        ]
    final = pooled
    if normalize:
        nodes += [
            helper.make_node("ReduceL2", [pooled], ["hs_norm"], axes=[1], keepdims=1),
            helper.make_node("Max", ["hs_norm", const("hs_eps_norm", EPSILON_NORM, np.float32)], ["hs_norm_c"]),
            helper.make_node("Div", [pooled, "hs_norm_c"], [output_name]),
        ]
        final = output_name
    else:
        nodes.append(helper.make_node("Identity", [pooled], [output_name]))
        final = output_name
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    dim = outputs[hidden].type.tensor_type.shape.dim[-1]
    out = helper.make_tensor_value_info(final, TensorProto.FLOAT, ["batch", dim.dim_value or dim.dim_param or None])
    del graph.output[:]
    graph.output.append(out)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
