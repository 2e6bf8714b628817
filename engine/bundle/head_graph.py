"""A fitted head as graph ops: ``embedding`` (float32 [n, dim]) -> ``probabilities`` (float32 [n, classes])
and ``label`` (string [n], the class with the highest probability, as ``headstart predict`` picks it).

- ``linear``: ``softmax(x @ coef.T + intercept)`` (MatMul, Add, Softmax).
- ``mlp``: its Linear / ReLU layers (dropout is the identity at prediction), then Softmax.
- ``knn``: MatMul against the (normalised) training vectors, TopK, the head's vote weights, one-hot
  Gather and a sum per class; refused above :data:`KNN_MAX_CELLS` training values (rows x dim).
- ``sklearn:*``: skl2onnx's converter (probabilities output, no ZipMap). ``LinearSVC`` and other
  estimators without ``predict_proba``: ``probabilities`` is the softmax of ``decision_function``
  (binary: of ``[-d, d]``), a score whose argmax is the predicted class, not a calibrated probability.
Anything else raises :class:`BundleError` listing what is supported.
"""

from __future__ import annotations

from typing import Any

from ..errors import BundleError
from .graph_parts import OPSET, GraphParts

#: kNN bundles hold the training vectors as one float32 constant: at most this many values (rows x dim).
#: 20M values = 80 MB, e.g. 52,000 MiniLM (384-d) vectors; see docs/deploy.md for the measured cost.
KNN_MAX_CELLS = 20_000_000

#: sklearn classifiers bundles are tested with (skl2onnx converts more; those pass the same gate or fail it).
TESTED_SKLEARN = ("LogisticRegression", "LinearSVC")

SCORES_KIND = {"proba": "probabilities", "decision": "softmax of decision_function (scores, not calibrated)"}


def head_kind(model: Any) -> str:
    """What the bundle's ``probabilities`` output means for this model's head."""
    head = model.head
    return "proba" if hasattr(head, "predict_proba") else "decision"


def reference_scores(model: Any, X: Any) -> Any:
    """What the head graph must reproduce on ``X``: the model's probabilities as ``predict`` gives them
    (calibrated), else the softmax of decision_function."""
    import numpy as np

    head = model.head
    if hasattr(head, "predict_proba"):
        return np.asarray(model.predict_proba_features(X), dtype=np.float32)
    d = np.asarray(head.decision_function(X), dtype=np.float64)
    if d.ndim == 1:
        d = np.stack([-d, d], axis=1)
    d -= d.max(axis=1, keepdims=True)
    e = np.exp(d)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def head_graph(model: Any, dim: int) -> Any:
    """ModelProto for ``model``'s head over ``embedding`` [n, dim]."""
    from onnx import TensorProto, helper

    name = model.manifest["head"]["name"]
    g = GraphParts("head_")
    builders = {"linear": _linear, "mlp": _mlp, "knn": _knn}
    if name in builders:
        scores = builders[name](g, model.head, "embedding")
        proba = g.node("Softmax", [scores], "proba", axis=1) if name != "knn" else scores
    elif name == "sklearn":
        proba = _sklearn(g, model.head, dim, model.manifest["head"].get("arg"))
    else:
        raise BundleError(f"head '{name}' has no graph form",
                          hint=f"bundles support the heads linear, mlp, knn and sklearn:* "
                               f"({', '.join(TESTED_SKLEARN)} tested); retrain with one of them")
    if head_kind(model) == "proba":
        proba = _temperature(g, proba, model.manifest)
    g.node("Identity", [proba], outputs=["probabilities"])
    classes = [str(c) for c in model.classes]
    import numpy as np

    best = _decision(g, model, classes) if model.decision else g.node("ArgMax", ["probabilities"], "best", axis=1,
                                                                      keepdims=0)
    g.node("Gather", [g.const(np.array(classes, dtype=object), hint="classes"), best], outputs=["label"], axis=0)
    extra = {"ai.onnx.ml": 3} if name == "sklearn" else None
    return g.model([helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])],
                   [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", len(classes)]),
                    helper.make_tensor_value_info("label", TensorProto.STRING, ["n"])], "headstart_head", extra)


def _temperature(g: GraphParts, proba: str, manifest: dict[str, Any]) -> str:
    """The calibration ``predict`` applies (``train.calibration.apply_temperature``): softmax(log(p) / T)."""
    import numpy as np

    from ..train.calibration import EPS, temperature_of

    t = temperature_of(manifest)
    if t == 1.0:
        return proba
    clipped = g.node("Clip", [proba, g.const(np.array(EPS, np.float32), hint="eps")], "clip")
    logp = g.node("Log", [clipped], "logp")
    return g.node("Softmax", [g.node("Div", [logp, g.const(np.array(t, np.float32), hint="t")], "scaled")],
                  "calibrated", axis=1)


def _decision(g: GraphParts, model: Any, classes: list[str]) -> str:
    """The class index by the model's decision threshold (``train --threshold-for``), as ``Model._decide``:
    the positive class where its probability is at least the threshold, else the negative one."""
    import numpy as np

    d = model.decision
    pos, neg = classes.index(str(d["positive"])), classes.index(str(d["negative"]))
    score = g.node("Gather", ["probabilities", g.const(np.array(pos, np.int64), hint="pos")], "score", axis=1)
    hit = g.node("GreaterOrEqual", [score, g.const(np.array(d["threshold"], np.float32), hint="threshold")], "hit")
    step = g.node("Mul", [g.node("Cast", [hit], "hit64", to=7), g.const(np.array(pos - neg, np.int64), hint="step")],
                  "step")
    return g.node("Add", [step, g.const(np.array(neg, np.int64), hint="neg")], "best")


def _linear(g: GraphParts, head: Any, x: str) -> str:
    import numpy as np

    w = g.const(np.ascontiguousarray(np.asarray(head.coef_, np.float32).T), hint="coef")
    return g.node("Add", [g.node("MatMul", [x, w]), g.const(np.asarray(head.intercept_, np.float32), hint="bias")])


def _mlp(g: GraphParts, head: Any, x: str) -> str:
    import numpy as np

    for layer in head.net_:
        kind = type(layer).__name__
        if kind == "Linear":
            w = layer.weight.detach().cpu().numpy().astype(np.float32).T
            b = layer.bias.detach().cpu().numpy().astype(np.float32)
            x = g.node("Add", [g.node("MatMul", [x, g.const(np.ascontiguousarray(w), hint="w")]), g.const(b, hint="b")])
        elif kind == "ReLU":
            x = g.node("Relu", [x])
        elif kind != "Dropout":
            raise BundleError(f"the mlp head holds a {kind} layer that has no graph form here",
                              hint="bundles know Linear, ReLU and Dropout layers")
    return x


def _knn(g: GraphParts, head: Any, x: str) -> str:
    import numpy as np

    vectors = np.asarray(head.vectors_, np.float32)
    if vectors.size > KNN_MAX_CELLS:
        raise BundleError(f"the knn head holds {vectors.shape[0]:,} x {vectors.shape[1]} training values "
                          f"({vectors.size:,} > {KNN_MAX_CELLS:,}) - too large to bundle",
                          hint="train a linear or mlp head for deployment, or a knn head on fewer items")
    if head.metric == "cosine":
        norm = g.node("Max", [g.node("ReduceL2", [x], axes=[1], keepdims=1), g.const(1e-12, np.float32)])
        x = g.node("Div", [x, norm])
    sims = g.node("MatMul", [x, g.const(np.ascontiguousarray(vectors.T), hint="train_vectors")], "sims")
    k = min(int(head.k), len(head.labels_))
    top, idx = g.node("TopK", [sims, g.const([k], np.int64)], "top", n_out=2, axis=1, largest=1, sorted=1)
    if head.weights == "uniform":
        w = g.node("Mul", [top, g.const(0.0, np.float32)])
        w = g.node("Add", [w, g.const(1.0, np.float32)])
    elif head.metric == "cosine":
        gap = g.node("Add", [g.node("Sub", [g.const(1.0, np.float32), top]), g.const(1e-6, np.float32)])
        w = g.node("Reciprocal", [g.node("Max", [gap, g.const(1e-6, np.float32)])])
    else:
        first = g.node("Slice", [top, g.const([0], np.int64), g.const([1], np.int64), g.const([1], np.int64)])
        w = g.node("Exp", [g.node("Sub", [top, first])])
    labels = g.node("Gather", [g.const(np.asarray(head.labels_, np.int64), hint="train_labels"), idx], axis=0)
    onehot = g.node("Gather", [g.const(np.eye(len(head.classes_), dtype=np.float32), hint="eye"), labels], axis=0)
    votes = g.node("ReduceSum", [g.node("Mul", [onehot, g.node("Unsqueeze", [w, g.const([2], np.int64)])]),
                                 g.const([1], np.int64)], keepdims=0)
    return g.node("Div", [votes, g.node("ReduceSum", [votes, g.const([1], np.int64)], keepdims=1)])


def _sklearn(g: GraphParts, estimator: Any, dim: int, arg: str | None) -> str:
    """skl2onnx's graph of ``estimator``, inlined into ``g``; returns the probability (or score) tensor."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise BundleError(f"skl2onnx is not installed ({exc})", hint="pip install skl2onnx") from None
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else {}
    try:
        onx = convert_sklearn(estimator, initial_types=[("embedding", FloatTensorType([None, dim]))],
                              target_opset={"": OPSET, "ai.onnx.ml": 3}, options=options)
    except Exception as exc:  # noqa: BLE001 - skl2onnx raises RuntimeError, NotImplementedError, ...
        raise BundleError(f"sklearn head '{arg or type(estimator).__name__}' cannot be converted by skl2onnx: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          hint=f"bundles are tested with sklearn:{', sklearn:'.join(TESTED_SKLEARN)} (and linear, mlp, "
                               "knn); skl2onnx lists what it converts in skl2onnx.supported_converters()") from None
    outputs = [o.name for o in onx.graph.output]
    renamed = {name: f"head_skl_{name}" for name in outputs}
    for node in onx.graph.node:
        node.name = f"head_skl_{node.name}"
        node.input[:] = [renamed.get(i, i if i == "embedding" else f"head_skl_{i}") for i in node.input]
        node.output[:] = [renamed.get(o, f"head_skl_{o}") for o in node.output]
        g.nodes.append(node)
    for init in onx.graph.initializer:
        init.name = f"head_skl_{init.name}"
        g.inits.append(init)
    scores = renamed[outputs[1]]
    if hasattr(estimator, "predict_proba"):
        return g.node("Identity", [scores])
    return g.node("Softmax", [scores], axis=1)  # binary: skl2onnx's scores are [-d, d] (the gate checks it)
