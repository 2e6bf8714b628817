"""Tokenisation as graph ops: raw strings ``text`` [n] -> the backbone's ``input_ids`` / ``attention_mask``
(/ ``token_type_ids``) [n, longest], padded per batch like headstart's own collate.

The tokenizer op is onnxruntime-extensions' ``BertTokenizer`` (from ``gen_processing_models`` on the
Hugging Face tokenizer), which takes one text at a time: a ``Loop`` tokenises each item into a sequence,
a second ``Loop`` pads each to the batch's longest; a single text (``n == 1``, a service's usual call) skips
both loops through an ``If`` (measured in benchmarks/bench_predict.py's ``tried``). Two settings are corrected
against the tokenizer.json that headstart uses: accents are stripped when the normaliser lowercases and
``strip_accents`` is unset (as Hugging Face does), and texts are cut at the backbone's ``max_length``.
Tokenizers other than BERT's WordPiece raise a :class:`BundleError` marked ``tokenizer_not_in_graph``: the bundle then ships the
tokenizer beside the file (:mod:`.tokenizer_beside`).

Known differences from the Hugging Face tokenizer (onnxruntime-extensions 0.15, measured on headstart's
probe texts): uppercase outside Latin (``Ω``) is not lowercased, voiced kana (``で``) keep their mark
instead of losing it, and a text holding NUL ends at the NUL (onnxruntime's string tensors are C strings).
The bundle's parity gate measures these per item (see :mod:`headstart.engine.bundle.gate`).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import BundleError
from .graph_parts import CONTRIB, GraphParts


def tokenizer_node_attributes(tokenizer_dir: str, max_length: int) -> dict[str, Any]:
    """The ``BertTokenizer`` op's attributes for the Hugging Face tokenizer in ``tokenizer_dir``."""
    from onnx import helper
    from onnxruntime_extensions import gen_processing_models
    from transformers import AutoTokenizer

    from ..backbones.fingerprint import tokenizer_file

    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    try:
        pre, _ = gen_processing_models(hf, pre_kwargs={})
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds for tokenizers it lacks
        raise _unsupported(tokenizer_dir, f"{type(exc).__name__}: {exc}") from None
    ops = [n for n in pre.graph.node if n.domain == CONTRIB]
    if len(ops) != 1 or ops[0].op_type != "BertTokenizer":
        raise _unsupported(tokenizer_dir, f"its graph uses {[n.op_type for n in pre.graph.node]}")
    attrs = {a.name: helper.get_attribute_value(a) for a in ops[0].attribute}
    normalizer = json.loads(tokenizer_file(tokenizer_dir).read_text()).get("normalizer") or {}
    if normalizer.get("type") == "BertNormalizer" and normalizer.get("strip_accents") is None:
        attrs["strip_accents"] = int(bool(normalizer.get("lowercase", True)))
    attrs["max_length"] = int(max_length)
    return attrs


def _unsupported(tokenizer_dir: str, why: str) -> BundleError:
    """The error for a tokenizer the graph cannot hold; ``details["tokenizer_not_in_graph"]`` marks it, so a
    bundle build can fall back to shipping the tokenizer beside the file (:mod:`.tokenizer_beside`)."""
    return BundleError(f"the tokenizer in {tokenizer_dir} cannot be expressed as graph ops ({why})",
                       hint="bundles tokenise BERT WordPiece in the graph; others ship their tokenizer.json beside "
                            "the bundle", details={"tokenizer_not_in_graph": why})


def text_graph(tokenizer_dir: str, max_length: int, outputs: tuple[str, ...], pad_id: int = 0) -> Any:
    """ModelProto: ``text`` (string [n]) -> ``outputs`` (int64 [n, longest]) named as the backbone's inputs.

    An ``If`` on ``n == 1`` picks the single-text branch (the tokenizer op on the text itself: no ``Loop``, no
    padding) or the batch branch (:func:`_batch_branch`); both give the same ids and mask for one text."""
    import numpy as np
    from onnx import TensorProto, helper

    unknown = [o for o in outputs if o not in ("input_ids", "attention_mask", "token_type_ids")]
    if unknown:
        raise BundleError(f"the backbone takes inputs {unknown} that a text bundle cannot make",
                          hint="text bundles feed input_ids, attention_mask and token_type_ids")
    attrs = tokenizer_node_attributes(tokenizer_dir, max_length)
    g = GraphParts("tok_")
    n = g.node("Gather", [g.node("Shape", ["text"]), g.const(0, np.int64)], "n")
    one = g.node("Equal", [n, g.const(1, np.int64)], "one")
    g.node("If", [one], outputs=["input_ids", "attention_mask"],
           then_branch=_single_branch(attrs), else_branch=_batch_branch(attrs, n, pad_id))
    if "token_type_ids" in outputs:
        g.node("Mul", ["input_ids", g.const(0, np.int64)], outputs=["token_type_ids"])
    return g.model([helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
                   [helper.make_tensor_value_info(o, TensorProto.INT64, ["n", "tokens"]) for o in outputs],
                   "headstart_tokenizer", {CONTRIB: 1})


def _branch_outputs(ids: str, mask: str) -> list[Any]:
    from onnx import TensorProto, helper

    return [helper.make_tensor_value_info(ids, TensorProto.INT64, [None, None]),
            helper.make_tensor_value_info(mask, TensorProto.INT64, [None, None])]


def _single_branch(attrs: dict[str, Any]) -> Any:
    """GraphProto (the ``If``'s then-branch): the one text of ``text`` -> ids [1, tokens], mask of ones."""
    import numpy as np
    from onnx import TensorProto, helper

    b = GraphParts("tok_one_")
    ids = b.node("BertTokenizer", ["text"], "ids", domain=CONTRIB, n_out=4, **attrs)[0]
    row = b.node("Unsqueeze", [ids, b.const([0], np.int64)], outputs=["tok_one_input_ids"])
    b.node("ConstantOfShape", [b.node("Shape", [row])], outputs=["tok_one_mask"],
           value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))
    return helper.make_graph(b.nodes, "one_text", [], _branch_outputs("tok_one_input_ids", "tok_one_mask"),
                             initializer=b.inits)


def _batch_branch(attrs: dict[str, Any], n: str, pad_id: int) -> Any:
    """GraphProto (the ``If``'s else-branch): ``n`` texts -> ids [n, longest] padded with ``pad_id``, mask.

    The tokenizer op takes one text at a time: a ``Loop`` tokenises each item into a sequence, a second
    ``Loop`` pads each to the batch's longest."""
    import numpy as np
    from onnx import TensorProto, helper

    g = GraphParts("tok_many_")
    empty = g.node("SequenceEmpty", [], "empty", dtype=TensorProto.INT64)

    # loop 1: tokenise item i, append its ids to a sequence, emit its length
    body = GraphParts("tok_b1_")
    item = body.node("Unsqueeze", [body.node("Gather", ["text", "tok_i"]), body.const([0], np.int64)], "item")
    ids = body.node("BertTokenizer", [item], "ids", domain=CONTRIB, n_out=4, **attrs)[0]
    body.node("SequenceInsert", ["tok_seq_in", ids], outputs=["tok_seq_out"])
    body.node("Squeeze", [body.node("Shape", [ids])], outputs=["tok_len"])
    body.node("Identity", ["tok_cond"], outputs=["tok_cond_out"])
    loop1 = helper.make_graph(
        body.nodes, "tokenise",
        [helper.make_tensor_value_info("tok_i", TensorProto.INT64, []),
         helper.make_tensor_value_info("tok_cond", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("tok_seq_in", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("tok_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("tok_seq_out", TensorProto.INT64, None),
         helper.make_tensor_value_info("tok_len", TensorProto.INT64, [])],
        initializer=body.inits)
    seq, lengths = g.node("Loop", [n, "", empty], "loop1", n_out=2, body=loop1)
    longest = g.node("ReduceMax", [lengths], "longest", keepdims=1)

    # loop 2: pad item i's ids to the longest, emit the row
    body2 = GraphParts("tok_b2_")
    row = body2.node("SequenceAt", [seq, "tok_j"], "row")
    width = body2.node("Shape", [row], "width")
    pads = body2.node("Concat", [body2.const([0], np.int64), body2.node("Sub", [longest, width])], axis=0)
    body2.node("Pad", [row, pads, body2.const(np.int64(pad_id))],
               outputs=["tok_row"], mode="constant")
    body2.node("Identity", ["tok_cond2"], outputs=["tok_cond2_out"])
    loop2 = helper.make_graph(
        body2.nodes, "pad",
        [helper.make_tensor_value_info("tok_j", TensorProto.INT64, []),
         helper.make_tensor_value_info("tok_cond2", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("tok_cond2_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("tok_row", TensorProto.INT64, [None])],
        initializer=body2.inits)
    g.node("Loop", [n, ""], "loop2", outputs=["tok_many_input_ids"], body=loop2)
    positions = g.node("Range", [g.const(0, np.int64), g.node("Squeeze", [longest]), g.const(1, np.int64)])
    inside = g.node("Less", [g.node("Unsqueeze", [positions, g.const([0], np.int64)]),
                             g.node("Unsqueeze", [lengths, g.const([1], np.int64)])])
    g.node("Cast", [inside], outputs=["tok_many_mask"], to=TensorProto.INT64)
    return helper.make_graph(g.nodes, "many_texts", [], _branch_outputs("tok_many_input_ids", "tok_many_mask"),
                             initializer=g.inits)
