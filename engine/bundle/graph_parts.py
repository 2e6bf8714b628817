"""A small builder for the ONNX graphs a bundle is made of (preprocessing, head): named nodes and
constants under one prefix, so parts never clash when they are merged."""

from __future__ import annotations

from typing import Any

#: The opset the bundle's own parts use: the backbone exports' opset (``engine/backbones/fingerprint.py``).
OPSET = 17
#: onnxruntime-extensions' custom-op domain (the tokenizer).
CONTRIB = "ai.onnx.contrib"


class GraphParts:
    """Collects nodes and initializers; ``const`` and ``node`` return the output name."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Any, dtype: Any = None, hint: str = "c") -> str:
        import numpy as np
        from onnx import numpy_helper

        array = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        if array.dtype.kind in "UO":
            from onnx import TensorProto, helper

            tensor = helper.make_tensor(self.name(hint), TensorProto.STRING, array.shape,
                                        [str(v).encode("utf-8") for v in array.ravel()])
        else:
            tensor = numpy_helper.from_array(array, self.name(hint))
        self.inits.append(tensor)
        return tensor.name

    def node(self, op: str, inputs: list[str], hint: str | None = None, outputs: list[str] | None = None,
             domain: str = "", n_out: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        outs = outputs or [self.name(hint or op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def model(self, inputs: list[Any], outputs: list[Any], name: str, extra_opsets: dict[str, int] | None = None) -> Any:
        """A checked ModelProto of the collected nodes (ir_version fixed so parts merge)."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        return helper.make_model(graph, opset_imports=opsets, ir_version=8, producer_name="headstart")
