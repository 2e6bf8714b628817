"""Prediction latency and throughput: a headstart bundle (one ONNX file on onnxruntime) against what users write
today, in the same process, with the same thread count.

    python benchmarks/bench_predict.py [--threads 1,2] [--calls 200] [--only text|images|knn|paths]
        [--path-sizes 1,10,100,1000,10000]

- text: the README's support-ticket model (MiniLM + linear head) as a bundle fed raw strings, against
  ``SentenceTransformer.encode`` + a fitted scikit-learn ``LogisticRegression.predict_proba``; precision against
  precision: the fp32 bundle against fp32 sentence-transformers, the int8 bundle (``--precision int8``) against
  sentence-transformers with its best CPU int8 (torch dynamic quantisation of every Linear, the
  LogisticRegression refitted on its features), with each one's test accuracy and int8-vs-fp32 label
  agreement. Also: the fp32 floor (a graph of the bundle's transformer weight matrices alone, each multiplied
  once: what any fp32 engine must pay to read them), and what was tried to make the bundle faster.
- images: an EfficientNet-Lite0 + linear model on a photo folder (crops of scikit-learn's sample photos) as a
  bundle fed decoded pixels, against the PyTorch eager EfficientNet-Lite0 (the module headstart exports) fed the
  same pixels resized by Pillow + a fitted ``LogisticRegression.predict_proba``.

Single item: warm p50/p99 of one call per item. Text: the engines take turns block by block (:func:`block_rounds`:
10 rounds, each engine a few warm-up calls then a block of ``--calls``/10 timed calls, the order reversed every
other round; p50 = the median of the rounds' p50s, with their spread), so load from other jobs hits every engine
alike while each runs with its weights warm in the caches, as a service runs; sentence-transformers int8 with
the fastest of torch's quantised engines (each measured); each side's settings go in ``text.settings``.
Images: ``--calls`` calls after 10 warm-up calls, the engines taking turns call by call; images also time the
bundle's in-graph resize alone.
Batch: items/s over the test items in batches (text 32; images of differing sizes: the bundle takes one image
per call, torch gets batches of 16; same-size images (resized to ``SAME_SIZE``): batches of 16 for both, the
bundle fed them stacked on the channel axis).
knn: the kNN head alone over 10,000-200,000 random 384-d vectors (file size, build, load, query p50).
paths: ``headstart predict`` through the Python API (``headstart.predict(model, csv, out, store=...)``, in this
process: the model and session load are paid by every call, as a CLI run pays them) on 1-10,000 new texts, via
the feature store (a fresh store: every item new; then again, every item cached) and via the in-memory fast path
(``store=False``); where the fast path stops paying is ``FAST_PATH_MAX_ITEMS`` (engine/train/fastpath.py).
Each engine runs at each ``--threads`` count (torch.set_num_threads for torch; intra-op threads for onnxruntime),
at its best settings for single items: the bundle as ``load_bundle`` opens it, sentence-transformers under
``torch.inference_mode`` with ``batch_size=1``.
Writes benchmarks/results/predict.json; ``python benchmarks/report.py`` renders it into docs/deploy.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HOME, RESULTS, ROOT, WORK, machine, save, table  # noqa: E402

OUT = WORK / "predict"
SAME_SIZE = (400, 300)  # (width, height) of the same-size image batch
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
TEST = ROOT / "examples" / "support-tickets" / "test.csv"


def _texts(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def _labels(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["label"] for row in csv.DictReader(fh)]


def latency(fn: Callable[[Any], Any], items: list[Any], calls: int) -> dict[str, float]:
    return paired_latency([fn], items, calls)[0]


def paired_latency(fns: list[Callable[[Any], Any]], items: list[Any], calls: int) -> list[dict[str, float]]:
    """Warm p50/p99 of one call per item for each engine in ``fns``, the engines taking turns call by call
    (so a burst of load from other jobs on this shared machine hits them alike)."""
    for item in items[:10]:
        for fn in fns:
            fn(item)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(calls):
        for k, fn in enumerate(fns if i % 2 == 0 else fns[::-1]):
            start = time.perf_counter()
            fn(items[i % len(items)])
            times[k if i % 2 == 0 else len(fns) - 1 - k].append(time.perf_counter() - start)
    out = []
    for t in times:
        ms = np.asarray(t) * 1000
        out.append({"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)})
    return out


def throughput(fn: Callable[[list[Any]], Any], items: list[Any], batch: int, repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, len(items), batch):
            fn(items[i:i + batch])
        best = max(best, len(items) / (time.perf_counter() - start))
    return round(best, 1)


def _session(path: Path, threads: int):
    """The bundle's session as ``load_bundle`` opens it (its recommended settings) at ``threads`` threads."""
    from headstart.engine.bundle.loader import open_session

    return open_session(path, threads=threads)


def _text_model() -> Path:
    import headstart as hs

    model_dir = OUT / "support-linear"
    if not (model_dir / "manifest.json").is_file():
        hs.train(str(TRAIN), "linear", backbone="minilm-l6", out=model_dir, progress=False)
    return model_dir


def bench_text(thread_counts: list[int], calls: int) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    import headstart as hs
    from headstart.plugins.backbones.minilm import _model_dir

    model_dir = _text_model()
    bundle = OUT / "support.onnx"
    hs.bundle(model_dir, bundle)
    bundle8 = OUT / "support-int8.onnx"  # the int8 bundle: its gate reports the label agreement and accuracy delta
    parity8 = hs.bundle(model_dir, bundle8, precision="int8").parity
    st = SentenceTransformer(_model_dir(), device="cpu")
    lr = LogisticRegression(max_iter=1000).fit(st.encode(_texts(TRAIN), batch_size=32), _labels(TRAIN))
    st8 = _st_int8_models()
    texts, truth = _texts(TEST), _labels(TEST)
    many = (texts * (512 // len(texts) + 1))[:512]
    runs = [_text_run(threads, calls, bundle, bundle8, st, lr, st8, texts, many) for threads in thread_counts]
    session, session8 = _session(bundle, thread_counts[0]), _session(bundle8, thread_counts[0])
    got = session.run(["label"], {"text": np.array(texts, dtype=object)})[0]
    proba, _ = session.run(["probabilities", "label"], {"text": np.array(texts, dtype=object)})
    proba8, got8 = session8.run(["probabilities", "label"], {"text": np.array(texts, dtype=object)})
    engine8 = runs[0]["sentence_transformers_int8_engine"]
    torch.backends.quantized.engine = engine8
    with torch.inference_mode():
        theirs, theirs8 = lr.predict(st.encode(texts)), st8[engine8][1].predict(st8[engine8][0].encode(texts))
    same = lambda a, b: float(np.mean([str(x) == str(y) for x, y in zip(a, b)]))  # noqa: E731
    return {"runs": runs, "items": len(texts), "batch_items": len(many), "batch_size": 32, "int8_parity": parity8,
            "latency_method": {"rounds": ROUNDS, "block_calls": max(calls // ROUNDS, MIN_BLOCK),
                               "warmup_calls_per_block": BLOCK_WARMUP,
                               "how": "engines take turns block by block (order reversed every other round); p50 = "
                                      "median of the rounds' p50s, p50_spread_ms = their [min, max]"},
            "settings": _text_settings(),
            "label_agreement": same(got, theirs),
            "test_accuracy": {"bundle": same(got, truth), "sentence_transformers": same(theirs, truth),
                              "bundle_int8": same(got8, truth), "sentence_transformers_int8": same(theirs8, truth)},
            "int8_label_agreement_with_fp32": {"bundle": same(got8, got), "sentence_transformers": same(theirs8, theirs)},
            "int8_bundle_max_abs_diff_vs_fp32": float(np.abs(proba8 - proba).max()),
            "bundle_ops": _op_counts(bundle),
            "single_item_tokens": _token_widths(bundle, texts),
            "profile": _profile(bundle, texts, thread_counts[0]),
            "profile_int8": _profile(bundle8, texts, thread_counts[0]),
            "fp32_floor": _fp32_floor(bundle, texts, thread_counts[0], calls, runs[0]["rows"][1]["p50_ms"]),
            "tried": _tried(model_dir, bundle, bundle8, texts, thread_counts[0], calls)}


def _encoder_weights(bundle: Path) -> list[np.ndarray]:
    """The fp32 weight matrices of the bundle's transformer: the second input of every MatMul and Attention
    node outside the head (``head_*``) that is an initializer."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle))
    inits = {t.name: t for t in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
            if n.op_type in ("MatMul", "Attention") and not n.name.startswith("head_") and n.input[1] in inits]


def _fp32_floor(bundle: Path, texts: list[str], threads: int, calls: int, st_p50_ms: float) -> dict[str, Any]:
    """What fp32 cannot go below here: one onnxruntime graph holding only the bundle's own transformer weight
    matrices, each multiplied once by a [1, tokens, in] input (tokens = the median single-text width), timed
    taking turns with the bundle (:func:`block_rounds`). Its weights are read from memory on every call, as the
    bundle's are; ``best_possible_p50_ratio`` is sentence-transformers' p50 (``st_p50_ms``, from the run at
    ``threads``) over this floor's. ``read_*``: numpy
    summing the same bytes (one plain pass over them, no multiplication): the bound for any engine, however good
    its matrix products, that must read fp32 weights larger than the caches once a call."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weights = _encoder_weights(bundle)
    tokens = int(_token_widths(bundle, texts)["median"])
    nodes, inits, outputs, inputs = [], [], [], {}
    for i, w in enumerate(weights):
        x = inputs.setdefault(w.shape[0], f"x{w.shape[0]}")
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, tokens, w.shape[1]]))
    graph = helper.make_graph(nodes, "fp32_floor", [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                                  [1, tokens, k])
                                                    for k, name in inputs.items()], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    floor = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {name: np.random.default_rng(0).standard_normal((1, tokens, k)).astype(np.float32)
            for k, name in inputs.items()}
    session = _session(bundle, threads)
    flat = np.concatenate([w.ravel() for w in weights])  # the same bytes, summed: a plain read of them
    ours, gemm, read = block_rounds([lambda t: session.run(["probabilities", "label"],
                                                             {"text": np.array([t], dtype=object)}),
                                       lambda t: floor.run(None, feed), lambda t: flat.sum()], texts, calls)
    theirs = {"p50_ms": st_p50_ms}
    flops = sum(2 * tokens * w.shape[0] * w.shape[1] for w in weights)
    mb = sum(w.nbytes for w in weights) / 1e6
    return {"threads": threads, "tokens": tokens, "matrices": len(weights), "weights_mb": round(mb, 1),
            "gflop": round(flops / 1e9, 3), "floor_p50_ms": gemm["p50_ms"], "bundle_p50_ms": ours["p50_ms"],
            "sentence_transformers_p50_ms": theirs["p50_ms"],
            "floor_gb_per_s": round(mb / gemm["p50_ms"], 1), "floor_gflop_per_s": round(flops / 1e6 / gemm["p50_ms"], 1),
            "best_possible_p50_ratio": round(theirs["p50_ms"] / gemm["p50_ms"], 2),
            "bundle_over_floor_ms": round(ours["p50_ms"] - gemm["p50_ms"], 3),
            "read_p50_ms": read["p50_ms"], "read_gb_per_s": round(mb / read["p50_ms"], 1),
            "read_bound_p50_ratio": round(theirs["p50_ms"] / read["p50_ms"], 2)}


#: Text single-item latency: rounds of blocks (see :func:`block_rounds`).
ROUNDS = 10
BLOCK_WARMUP = 5
MIN_BLOCK = 20


def block_rounds(fns: list[Callable[[Any], Any]], items: list[Any], calls: int, rounds: int = ROUNDS
                 ) -> list[dict[str, Any]]:
    """Warm single-item latency of each engine in ``fns``, the engines taking turns block by block: in each of
    ``rounds`` rounds every engine makes :data:`BLOCK_WARMUP` warm-up calls and then a block of
    ``max(calls // rounds, MIN_BLOCK)`` timed calls, one item a call, the order of the engines reversed every
    other round. An engine thus runs as a service runs it, one request after another with its weights warm in
    the caches (taking turns call by call, each engine's weights evicted the other's from the 32 MB L3 before
    every call, the int8 bundle's 22 MB of weights most of all: ``call_by_call_p50_ms`` in the results), and a
    burst of load from other jobs on this shared machine spoils a round of every engine alike, not one figure.
    Per engine: ``p50_ms`` the median of the rounds' p50s, ``p50_spread_ms`` their [min, max], ``p99_ms`` over
    all timed calls, ``rounds_p50_ms`` each round's p50."""
    block = max(calls // rounds, MIN_BLOCK)
    times: list[list[list[float]]] = [[] for _ in fns]
    for r in range(rounds):
        order = list(range(len(fns))) if r % 2 == 0 else list(range(len(fns)))[::-1]
        for k in order:
            fn = fns[k]
            for i in range(BLOCK_WARMUP):
                fn(items[(r + i) % len(items)])
            got = []
            for i in range(block):
                item = items[(r * block + i) % len(items)]
                start = time.perf_counter()
                fn(item)
                got.append(time.perf_counter() - start)
            times[k].append(got)
    out = []
    for per_round in times:
        p50s = [float(np.percentile(np.asarray(t) * 1000, 50)) for t in per_round]
        every = np.concatenate(per_round) * 1000
        out.append({"p50_ms": round(float(np.median(p50s)), 3), "p99_ms": round(float(np.percentile(every, 99)), 3),
                    "p50_spread_ms": [round(min(p50s), 3), round(max(p50s), 3)],
                    "rounds_p50_ms": [round(v, 3) for v in p50s]})
    return out


def round_ratios(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """``base``'s p50 over ``other``'s round by round (the same round: the same load): min, median, max."""
    ratios = [b / o for b, o in zip(base["rounds_p50_ms"], other["rounds_p50_ms"])]
    return {"min": round(min(ratios), 2), "median": round(float(np.median(ratios)), 2), "max": round(max(ratios), 2)}


def _tried(model_dir: Path, bundle: Path, bundle8: Path, texts: list[str], threads: int,
           calls: int) -> list[dict[str, Any]]:
    """Single-text p50 (:func:`block_rounds`) of what was tried to make the bundles faster, each taking turns with
    the bundle it would replace as that ships (``p50_ratio``: the shipped p50 over the variant's; above 1 = the
    variant is faster; ``per_round_ratio``: the same round by round), and its max abs probability difference from
    that bundle, one test text a call."""
    import onnxruntime as ort

    from headstart.engine.bundle.loader import CPU_DISABLED_OPTIMIZERS, session_options
    from headstart.engine.bundle.text_graph import text_graph
    from headstart.plugins.backbones.minilm import minilm_spec

    def opened(path: Path, disabled: bool = True, config: dict[str, str] | None = None, mem_pattern: bool = True):
        opts = session_options(threads=threads)
        opts.enable_mem_pattern = mem_pattern
        for key, value in (config or {}).items():
            opts.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if disabled else [])

    p = minilm_spec().preprocessing
    tokenizer = ort.InferenceSession(text_graph(p.tokenizer, p.max_length, tuple(p.inputs)).SerializeToString(),
                                     session_options(threads=threads), providers=["CPUExecutionProvider"])
    shipped, shipped8 = _session(bundle, threads), _session(bundle8, threads)
    daz = {"session.set_denormal_as_zero": "1"}
    variants = [  # (what, the shipped bundle it is measured against, the variant)
        ("fp32: SkipLayerNormFusion on (onnxruntime's default)", shipped, opened(bundle, disabled=False)),
        ("fp32: denormals as zero (session.set_denormal_as_zero)", shipped, opened(bundle, config=daz)),
        ("fp32: one text through the tokenizer's Loops (no single-text If)", shipped,
         opened(_without_single_text_branch(bundle))),
        ("int8 as the backbone's int8 export quantises it (4 MatMuls + 1 Attention kept fp32)", shipped8,
         opened(_backbone_recipe_int8(model_dir))),
        ("int8: SkipLayerNormFusion on (onnxruntime's default)", shipped8, opened(bundle8, disabled=False)),
        ("int8: denormals as zero (session.set_denormal_as_zero)", shipped8, opened(bundle8, config=daz)),
        ("int8: memory pattern off (enable_mem_pattern=False)", shipped8, opened(bundle8, mem_pattern=False)),
        ("int8: one text through the tokenizer's Loops (no single-text If)", shipped8,
         opened(_without_single_text_branch(bundle8))),
        ("int8: u8 weights (u8 x u8 products) instead of s8", shipped8,
         opened(_requantized(bundle, "u8u8", unsigned=True, per_channel=True))),
        ("int8: weights per tensor instead of per channel", shipped8,
         opened(_requantized(bundle, "per-tensor", unsigned=False, per_channel=False))),
    ]
    run = lambda s: lambda t: s.run(["probabilities", "label"], {"text": np.array([t], dtype=object)})  # noqa: E731
    one_by_one = lambda s: np.concatenate([run(s)(t)[0] for t in texts])  # noqa: E731
    rows = []
    references = {id(shipped): one_by_one(shipped), id(shipped8): one_by_one(shipped8)}
    for what, base_session, session in variants:
        base, other = block_rounds([run(base_session), run(session)], texts, calls)
        rows.append({"variant": what, "p50_ms": other["p50_ms"], "shipped_p50_ms": base["p50_ms"],
                     "p50_ratio": round(base["p50_ms"] / other["p50_ms"], 2),
                     "per_round_ratio": round_ratios(base, other),
                     "max_abs_diff": float(np.abs(one_by_one(session) - references[id(base_session)]).max())})
    base, tok = block_rounds([run(shipped), lambda t: tokenizer.run(None, {"text": np.array([t], dtype=object)})],
                             texts, calls)
    rows.append({"variant": "fp32: the in-graph tokenizer alone (its share of a call)", "p50_ms": tok["p50_ms"],
                 "shipped_p50_ms": base["p50_ms"], "share": round(tok["p50_ms"] / base["p50_ms"], 3)})
    return rows


def _requantized(bundle: Path, tag: str, unsigned: bool, per_channel: bool) -> Path:
    """The fp32 ``bundle``'s transformer quantised as the int8 bundle's is (the same nodes: every MatMul and
    Attention outside the head) but with u8 weights (``unsigned``) and/or per-tensor scales
    (``<name>-<tag>.onnx`` beside it)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from headstart.engine.bundle.quantize import WHOLE_INT8_OPS

    model = onnx.load(str(bundle), load_external_data=False)
    chosen = [n.name for n in model.graph.node if n.op_type in WHOLE_INT8_OPS and not n.name.startswith("head_")]
    out = bundle.with_name(f"{bundle.stem}-{tag}.onnx")
    quantize_dynamic(str(bundle), str(out), weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                     per_channel=per_channel, op_types_to_quantize=list(WHOLE_INT8_OPS), nodes_to_quantize=chosen,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _without_single_text_branch(path: Path) -> Path:
    """The bundle at ``path`` as it was before the tokenizer's single-text ``If``: the If replaced by its batch
    (else) branch, so one text goes through both ``Loop``s too (``<name>-loops.onnx`` beside it)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.op_type == "If" and n.name.startswith("tok_"))
    branch = next(a.g for a in nodes[at].attribute if a.name == "else_branch")
    inlined = list(branch.node) + [helper.make_node("Identity", [o.name], [new], name=f"tok_loops_out_{new}")
                                   for o, new in zip(branch.output, nodes[at].output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes[:at] + inlined + nodes[at + 1:])
    model.graph.initializer.extend(branch.initializer)
    out = path.with_name(f"{path.stem}-loops.onnx")
    onnx.save(model, str(out))
    return out


def _backbone_recipe_int8(model_dir: Path) -> Path:
    """The bundle as it was before int8 text bundles were quantised whole: the backbone's int8 export (its
    recipe keeps layer 0's Attention and the feed-forwards of layers 0 and 4 fp32) + the same head."""
    from headstart.engine.backbones.export import export
    from headstart.engine.bundle.assemble import assemble
    from headstart.engine.bundle.build import _pad_id
    from headstart.engine.bundle.head_graph import head_graph
    from headstart.engine.bundle.text_graph import text_graph
    from headstart.engine.plugins import get_engine
    from headstart.engine.train.model import load_model
    from headstart.plugins.backbones.minilm import minilm_spec

    engine = get_engine()
    spec = minilm_spec()
    exported = export(spec, "int8", settings=engine.settings, engine=engine)
    p = spec.preprocessing
    pre = text_graph(p.tokenizer, p.max_length, tuple(p.inputs), _pad_id(spec))
    out = OUT / "support-int8-backbone-recipe.onnx"
    out.write_bytes(assemble(pre, exported.path, head_graph(load_model(model_dir), spec.dim), spec.output_name,
                             {}).SerializeToString())
    return out


def _profile(bundle: Path, texts: list[str], threads: int, calls: int = 100) -> dict[str, Any]:
    """Where a single-text call of the bundle spends its time: onnxruntime's profiler (``enable_profiling``)
    over ``calls`` calls, kernel time per op type (ms a call and share), the 8 largest."""
    import collections
    import tempfile

    import onnxruntime as ort

    from headstart.engine.bundle.loader import CPU_DISABLED_OPTIMIZERS, session_options

    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        opts = session_options(threads=threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(bundle), opts, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
        for i in range(calls):
            session.run(["probabilities", "label"], {"text": np.array([texts[i % len(texts)]], dtype=object)})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    runs = []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"])
    total = sum(per_op.values())
    return {"threads": threads, "calls": calls, "model_run_p50_ms": round(float(np.median(runs)) / 1000, 3),
            "kernel_ms_per_call": round(total / calls / 1000, 3),
            "top_ops": [{"op": op, "ms_per_call": round(us / calls / 1000, 3), "share": round(us / total, 3)}
                        for op, us in per_op.most_common(8)]}


def _op_counts(path: Path) -> dict[str, int]:
    """Node count per op type of the bundle's top graph (``domain:op`` for contrib ops): shows the fused
    transformer ops (Attention, BiasGelu, EmbedLayerNormalization) survived the merge."""
    import collections

    import onnx

    nodes = onnx.load(str(path)).graph.node
    return dict(collections.Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in nodes).most_common())


def _token_widths(bundle: Path, texts: list[str]) -> dict[str, Any]:
    """Width of the ``input_ids`` the in-graph tokenizer makes for one text a call (padded to the longest of
    the call, so a single text is never padded)."""
    import onnx

    from headstart.engine.bundle.loader import open_session

    model = onnx.load(str(bundle))
    model.graph.output.extend([onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, None)])
    probe = open_session(model.SerializeToString())
    widths = [int(probe.run(["input_ids"], {"text": np.array([t], dtype=object)})[0].shape[1]) for t in texts]
    tokens = [int((probe.run(["input_ids"], {"text": np.array([t], dtype=object)})[0] != 0).sum()) for t in texts]
    return {"min": min(widths), "median": float(np.median(widths)), "max": max(widths),
            "padding_tokens": int(sum(widths) - sum(tokens))}


#: torch's kernel libraries for quantised ops; sentence-transformers int8 is measured with the fastest one
ST_INT8_ENGINES = ("x86", "fbgemm", "onednn")


def _st_int8_models() -> dict[str, tuple[Any, Any]]:
    """sentence-transformers' best CPU int8, per torch quantised engine (:data:`ST_INT8_ENGINES` that this
    torch supports): torch dynamic quantisation of every Linear (qint8, weights packed for that engine), and a
    LogisticRegression refitted on that model's own features."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    from headstart.plugins.backbones.minilm import _model_dir

    models = {}
    for engine in ST_INT8_ENGINES:
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        model = torch.ao.quantization.quantize_dynamic(SentenceTransformer(_model_dir(), device="cpu"),
                                                       {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            features = model.encode(_texts(TRAIN), batch_size=32)
        models[engine] = (model, LogisticRegression(max_iter=1000).fit(features, _labels(TRAIN)))
    return models


def _text_settings() -> dict[str, Any]:
    """What each side runs with (recorded with the figures)."""
    from headstart.engine.bundle.loader import CPU_DISABLED_OPTIMIZERS

    return {"bundle": {"opened_by": "headstart.engine.bundle.loader.open_session (as load_bundle opens it)",
                       "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
                       "intra_op_num_threads": "the run's threads", "inter_op_num_threads": 1,
                       "disabled_optimizers": list(CPU_DISABLED_OPTIMIZERS), "feed": "one raw string a call"},
            "sentence_transformers": {
                "threads": "torch.set_num_threads(the run's threads)", "grad": "torch.inference_mode()",
                "call": "head.predict_proba(model.encode([text], batch_size=1, convert_to_numpy=True, "
                        "show_progress_bar=False))",
                "padding": "sentence-transformers pads to the longest text of a call: one text, no padding",
                "int8": "torch.ao.quantization.quantize_dynamic(every nn.Linear, qint8) under each of "
                        f"{list(ST_INT8_ENGINES)}; the fastest at single texts per run is compared "
                        "(sentence_transformers_int8_engine, with every engine's p50)"}}


def _text_run(threads: int, calls: int, bundle: Path, bundle8: Path, st: Any, lr: Any,
              st8: dict[str, tuple[Any, Any]], texts: list[str], many: list[str]) -> dict[str, Any]:
    import os

    import torch

    load_before = round(os.getloadavg()[0], 2)
    session, session8 = _session(bundle, threads), _session(bundle8, threads)
    torch.set_num_threads(threads)

    def onnx_calls(sess: Any):  # (one text, a batch of texts) through a bundle session
        def run(ts: list[str]):
            return sess.run(["probabilities", "label"], {"text": np.array(ts, dtype=object)})
        return (lambda t: run([t])), run

    def st_calls(model: Any, head: Any, engine: str | None = None):  # (one text, a batch) through ST + sklearn
        def run(ts: list[str]):
            if engine:
                torch.backends.quantized.engine = engine
            with torch.inference_mode():
                return head.predict_proba(model.encode(ts, batch_size=len(ts), convert_to_numpy=True,
                                                       show_progress_bar=False))
        return (lambda t: run([t])), run

    # sentence-transformers int8 at its best: each torch quantised engine's model, taking turns; the fastest
    engines = list(st8)
    trial = block_rounds([st_calls(*st8[e], engine=e)[0] for e in engines], texts, calls // 2, rounds=4)
    engine = engines[int(np.argmin([t["p50_ms"] for t in trial]))]

    (bundle_one, bundle_many), (int8_one, int8_many) = onnx_calls(session), onnx_calls(session8)
    (st_one, st_many), (st8_one, st8_many) = st_calls(st, lr), st_calls(*st8[engine], engine=engine)

    ours, theirs, ours8, theirs8 = block_rounds([bundle_one, st_one, int8_one, st8_one], texts, calls)
    # the previous method, for the record: the same four taking turns call by call (each evicting the others'
    # weights from the caches before every call)
    turns = paired_latency([bundle_one, st_one, int8_one, st8_one], texts, calls)
    rows = [{"engine": "headstart bundle (onnxruntime)", **ours, "items_per_s": throughput(bundle_many, many, 32)},
            {"engine": "SentenceTransformer.encode + LogisticRegression", **theirs,
             "items_per_s": throughput(st_many, many, 32)},
            {"engine": "headstart bundle --precision int8", **ours8, "items_per_s": throughput(int8_many, many, 32)},
            {"engine": f"SentenceTransformer (torch dynamic int8 Linear, {engine}) + LogisticRegression", **theirs8,
             "items_per_s": throughput(st8_many, many, 32)}]
    return {"threads": threads, "rows": rows, "p50_ratio": round(rows[1]["p50_ms"] / rows[0]["p50_ms"], 2),
            "p50_ratio_int8": round(rows[1]["p50_ms"] / rows[2]["p50_ms"], 2),
            "p50_ratio_int8_vs_int8": round(rows[3]["p50_ms"] / rows[2]["p50_ms"], 2),
            "throughput_ratio": round(rows[0]["items_per_s"] / rows[1]["items_per_s"], 2),
            "per_round_ratio": round_ratios(theirs, ours), "per_round_ratio_int8_vs_int8": round_ratios(theirs8, ours8),
            "call_by_call_p50_ms": [t["p50_ms"] for t in turns],
            "call_by_call_p50_ratio_int8_vs_int8": round(turns[3]["p50_ms"] / turns[2]["p50_ms"], 2),
            "sentence_transformers_int8_engine": engine,
            "sentence_transformers_int8_engines_p50_ms": {e: t["p50_ms"] for e, t in zip(engines, trial)},
            "loadavg_1min": [load_before, round(os.getloadavg()[0], 2)]}


def photos(root: Path, per_class: int, seed: int) -> list[Path]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    paths = []
    for name, photo in zip(("china", "flower"), load_sample_images().images):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            h, w = (int(v) for v in rng.integers(160, 420, size=2))
            y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
            path = root / name / f"{j:02d}.jpg"
            if not path.exists():
                Image.fromarray(photo[y:y + h, x:x + w]).save(path, quality=90)
            paths.append(path)
    return paths


def bench_images(threads: int, calls: int) -> dict[str, Any]:
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    import headstart as hs
    from headstart.engine.bundle.image_graph import image_graph
    from headstart.engine.embed.imaging import _resize_crop, normalise_batch
    from headstart.plugins.backbones.efficientnet import efficientnet_spec

    train_paths = photos(OUT / "photos" / "train", 24, 0)
    test_paths = photos(OUT / "photos" / "test", 16, 1)
    model_dir = OUT / "photo-linear"
    if not (model_dir / "manifest.json").is_file():
        hs.train(str(OUT / "photos" / "train"), "linear", backbone="efficientnet-lite0", out=model_dir, progress=False)
    bundle = OUT / "photos.onnx"
    hs.bundle(model_dir, bundle)
    session = _session(bundle, threads)
    torch.set_num_threads(threads)
    spec = efficientnet_spec()
    net = spec.build_torch().eval()
    prep = spec.preprocessing

    def torch_features(images: list[np.ndarray]) -> np.ndarray:
        batch = normalise_batch([np.asarray(_resize_crop(Image.fromarray(im), prep)) for im in images], prep)
        with torch.inference_mode():
            return net(pixel_values=torch.from_numpy(batch)).numpy()

    decode = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    train_images, test_images = [decode(p) for p in train_paths], [decode(p) for p in test_paths]
    lr = LogisticRegression(max_iter=1000).fit(torch_features(train_images), [p.parent.name for p in train_paths])

    def bundle_one(im: np.ndarray):
        return session.run(["probabilities", "label"], {"image": im})

    def bundle_many(ims: list[np.ndarray]):  # one call per image: sizes differ
        return [bundle_one(im) for im in ims]

    def bundle_batch(ims: list[np.ndarray]):  # same-size images: one call, stacked on the channel axis
        return session.run(["probabilities", "label"], {"image": np.concatenate(ims, axis=2)})

    def torch_one(im: np.ndarray):
        return lr.predict_proba(torch_features([im]))

    def torch_many(ims: list[np.ndarray]):
        return lr.predict_proba(torch_features(ims))

    pre = _session_of(image_graph(prep), threads)
    ours, theirs, resize_only = paired_latency(
        [bundle_one, torch_one, lambda im: pre.run(None, {"image": im})], test_images, calls)
    same = [np.asarray(Image.fromarray(im).resize(SAME_SIZE, Image.Resampling.BILINEAR)) for im in test_images]
    rows = [{"engine": "headstart bundle (onnxruntime)", **ours, "items_per_s": throughput(bundle_many, test_images, 16),
             "same_size_items_per_s": throughput(bundle_batch, same, 16),
             "same_size_one_by_one_items_per_s": throughput(bundle_many, same, 16)},
            {"engine": "PyTorch eager EfficientNet-Lite0 + LogisticRegression", **theirs,
             "items_per_s": throughput(torch_many, test_images, 16), "same_size_items_per_s": throughput(torch_many, same, 16)}]
    agree = float(np.mean([str(bundle_one(im)[1][0]) == str(lr.predict(torch_features([im]))[0]) for im in test_images]))
    batch_agree = float(np.mean([a == b for a, b in zip(bundle_batch(same)[1], [bundle_one(im)[1][0] for im in same])]))
    return {"threads": threads, "rows": rows, "items": len(test_images), "batch_items": len(test_images), "batch_size": 16,
            "same_size": list(SAME_SIZE), "in_graph_resize_p50_ms": resize_only["p50_ms"],
            "p50_ratio": round(rows[1]["p50_ms"] / rows[0]["p50_ms"], 2),
            "throughput_ratio": round(rows[0]["items_per_s"] / rows[1]["items_per_s"], 2),
            "same_size_throughput_ratio": round(rows[0]["same_size_items_per_s"] / rows[1]["same_size_items_per_s"], 2),
            "label_agreement": agree, "batch_label_agreement": batch_agree}


def _session_of(model: Any, threads: int):
    import onnxruntime as ort

    from headstart.engine.bundle.loader import session_options

    return ort.InferenceSession(model.SerializeToString(), session_options(threads=threads, needs_extensions=False),
                                providers=["CPUExecutionProvider"])


def bench_knn(threads: int, calls: int) -> dict[str, Any]:
    """The kNN head alone as a graph over n random 384-d training vectors: file size, build and load time,
    single-query p50 (what bounds KNN_MAX_CELLS in engine/bundle/head_graph.py)."""
    import onnxruntime as ort

    from headstart.engine.bundle import head_graph as graphs
    from headstart.engine.bundle.head_graph import head_graph
    from headstart.plugins.heads.knn import KNNHead

    graphs.KNN_MAX_CELLS = 10**9  # measured past the limit, to show what it bounds

    rng = np.random.default_rng(0)
    rows = []
    for n in (10_000, 50_000, 100_000, 200_000):
        X = rng.standard_normal((n, 384)).astype(np.float32)
        head = KNNHead().fit(X, rng.integers(0, 10, n).astype(str))
        model = type("M", (), {"head": head, "classes": list(head.classes_), "decision": None,
                               "manifest": {"head": {"name": "knn"}}})()
        start = time.perf_counter()
        data = head_graph(model, 384).SerializeToString()
        built = time.perf_counter() - start
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        start = time.perf_counter()
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        loaded = time.perf_counter() - start
        queries = list(rng.standard_normal((50, 1, 384)).astype(np.float32))
        rows.append({"n": n, "cells": n * 384, "bytes": len(data), "build_s": round(built, 2),
                     "load_s": round(loaded, 2),
                     **latency(lambda q: session.run(None, {"embedding": q}), queries, min(calls, 100))})
    return {"rows": rows}


def bench_paths(sizes: list[int], repeat: int = 3) -> dict[str, Any]:
    """Seconds of ``headstart.predict(model, csv, out)`` on ``size`` new texts through the feature store (a
    fresh store: every item new; then the same call again: every item cached) and in memory (``store=False``),
    in this process; the median of ``repeat`` runs up to 100 items, one run above."""
    import os
    import shutil

    import headstart as hs
    from headstart.engine.plugins import get_engine
    from headstart.engine.train.fastpath import FAST_PATH_MAX_ITEMS
    from headstart.engine.train.model import load_model

    model_dir = _text_model()
    fingerprint = load_model(model_dir).backbone["fingerprint"]
    store_dir = get_engine().settings.features_dir / fingerprint
    pool = _texts(TRAIN) + _texts(TEST)
    rows = []
    for n in sizes:
        source = OUT / "paths" / f"texts-{n}.csv"
        source.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "w", newline="", encoding="utf-8") as fh:  # new texts: a pool text + a number
            csv.writer(fh).writerows([["text"], *([f"{pool[i % len(pool)]} (ticket {i})"] for i in range(n))])
        out = OUT / "paths" / f"predictions-{n}.csv"
        load_before = round(os.getloadavg()[0], 2)
        times: dict[str, list[float]] = {"fast": [], "store_new": [], "store_cached": []}
        for _ in range(repeat if n <= 100 else 1):
            for name in times:
                if name == "store_new":
                    shutil.rmtree(store_dir, ignore_errors=True)  # every item new to the store
                start = time.perf_counter()
                hs.predict(model_dir, str(source), str(out), store=name != "fast", progress=False)
                times[name].append(time.perf_counter() - start)
        row = {"items": n, **{f"{k}_s": round(float(np.median(v)), 3) for k, v in times.items()}}
        row["store_new_over_fast"] = round(row["store_new_s"] / row["fast_s"], 2)
        row["store_cached_over_fast"] = round(row["store_cached_s"] / row["fast_s"], 2)
        row["loadavg_1min"] = [load_before, round(os.getloadavg()[0], 2)]
        rows.append(row)
        print(row, flush=True)
    return {"rows": rows, "fast_path_max_items": FAST_PATH_MAX_ITEMS,
            "how": "headstart.predict(model, csv, out, store=True|False) in one Python process, the support-ticket "
                   "linear model (MiniLM), default threads"}


def _runs(fn: Callable[[int, int], dict[str, Any]], thread_counts: list[int], calls: int) -> dict[str, Any]:
    """Images: one full run per thread count; the first run's common figures at the top."""
    import os

    runs = []
    for t in thread_counts:
        load_before = round(os.getloadavg()[0], 2)
        runs.append({**fn(t, calls), "loadavg_1min": [load_before, round(os.getloadavg()[0], 2)]})
    common = {k: v for k, v in runs[0].items() if k not in ("rows", "threads") and not k.endswith("ratio")}
    return {**common, "runs": [{k: v for k, v in r.items() if k in ("threads", "rows", "loadavg_1min")
                                or k.endswith("ratio")} for r in runs]}


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default: 1,2)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--only", choices=["text", "images", "knn", "paths"], default=None)
    parser.add_argument("--path-sizes", default="1,10,100,1000,10000")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]
    os.environ.setdefault("HEADSTART_HOME", str(HOME))
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "threads": thread_counts, "calls": args.calls}
    previous = RESULTS / "predict.json"
    parts = ("text", "images", "knn", "paths")
    if args.only and previous.is_file():  # one part re-measured: keep the others' figures
        old = json.loads(previous.read_text())
        result.update({k: v for k, v in old.items() if k in parts and k != args.only})
    for name in parts:
        if args.only not in (None, name):
            continue
        load_before = round(os.getloadavg()[0], 2)
        if name == "text":
            result[name] = bench_text(thread_counts, args.calls)
        elif name == "images":
            result[name] = _runs(bench_images, thread_counts, args.calls)
        elif name == "knn":
            result[name] = bench_knn(thread_counts[0], args.calls)
        else:
            result[name] = bench_paths([int(n) for n in args.path_sizes.split(",")])
        result[name]["loadavg_1min"] = [load_before, round(os.getloadavg()[0], 2)]  # others' jobs share the CPUs
        if name == "knn":
            print(table(result[name]["rows"], ["n", "cells", "bytes", "build_s", "load_s", "p50_ms", "p99_ms"]))
        elif name == "paths":
            print(table(result[name]["rows"], ["items", "fast_s", "store_new_s", "store_cached_s"]))
        else:
            for run in result[name]["runs"]:
                print(f"\n{name}, {run['threads']} thread(s): p50 ratio {run['p50_ratio']}x, throughput ratio "
                      f"{run['throughput_ratio']}x, label agreement {result[name]['label_agreement']}")
                print(table(run["rows"], ["engine", "p50_ms", "p99_ms", "items_per_s"]))
            if name == "text":
                part = result[name]
                print(f"\nint8 vs int8 p50 ratio: {[r['p50_ratio_int8_vs_int8'] for r in part['runs']]}; test accuracy "
                      f"{part['test_accuracy']}; int8 label agreement with fp32 {part['int8_label_agreement_with_fp32']}")
                print(f"fp32 floor (the transformer's weight matrices alone): {part['fp32_floor']}")
                print(table(part["tried"], ["variant", "p50_ms", "shipped_p50_ms", "p50_ratio", "max_abs_diff", "share"]))
    save("predict", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
