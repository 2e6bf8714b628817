"""``headstart bundle``: one ONNX file = in-graph preprocessing + backbone + head, gated on parity.

Steps: load the model, make sure its backbone export exists (at the bundle's precision), build the
preprocessing graph for the modality (:mod:`.text_graph`, :mod:`.image_graph`; numeric backbones keep their
own inputs), the head graph (:mod:`.head_graph`), join them (:mod:`.assemble`), run the gate
(:mod:`.gate`) and only then write the file atomically. A failed gate writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, ConfigError
from . import gate

#: Training items the gate runs (spread evenly over the source).
GATE_SAMPLE = 256


@dataclass
class BundleReport:
    path: Path
    bytes: int
    precision: str
    modality: str
    head: str
    parity: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)
    tokenizer_file: Path | None = None  # a text bundle whose tokenizer cannot live in the graph ships it here

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "bytes": self.bytes, "precision": self.precision, "modality": self.modality,
                "head": self.head, "parity": self.parity, "seconds": round(self.seconds, 2), "notes": self.notes,
                "tokenizer_file": str(self.tokenizer_file) if self.tokenizer_file else None}


def build_bundle(model_dir: str | Path, out: str | Path, *, precision: str | None = None,
                 check_on: str | Path | None = None, sample: int = GATE_SAMPLE, trust: bool = False,
                 engine: Any = None, reader_options: Any = None) -> BundleReport:
    """Write the bundle of the model at ``model_dir`` to ``out`` after it passed the gate (see module doc).

    ``check_on``: items to gate on (default: the training source recorded in the model); ``precision``:
    of the bundle's backbone (default: the model's); ``reader_options``: how that source is read (e.g. events)."""
    from ..backbones.export import export
    from ..backbones.resolve import resolve_backbone
    from ..plugins import get_engine
    from ..store.atomic import write_bytes_atomic
    from ..train.model import load_model

    started = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"the bundle's file name {out} does not end in .onnx", hint="e.g. -o model.onnx")
    if out.is_dir():
        raise ConfigError(f"the output {out} is a folder", hint="give a file name, e.g. -o model.onnx")
    from ..embed.sources import refuse_output_over_inputs

    from .tokenizer_beside import beside

    folder = Path(model_dir)
    inputs = ([*(p for p in folder.iterdir() if p.is_file()), *([check_on] if check_on else [])]
              if folder.is_dir() else [])
    refuse_output_over_inputs(out, inputs)
    refuse_output_over_inputs(beside(out), inputs)
    engine = engine or get_engine()
    model = load_model(model_dir, trust=trust, engine=engine)
    if not model.backbone.get("name"):
        raise BundleError(f"the model in {model_dir} was trained on raw feature arrays: it has no backbone to bundle",
                          hint="train on a source headstart embeds (text, images, numeric arrays)")
    model_precision = model.backbone.get("precision", "fp32")
    precision = precision or model_precision
    if precision not in ("fp32", "int8", "fp16"):
        raise ConfigError(f"unknown precision {precision!r}", hint="use fp32, int8 or fp16")
    spec = resolve_backbone(model.backbone["name"], engine)
    model.ensure_backbone(engine)
    source = check_on or (model.manifest.get("training") or {}).get("source")
    if source is None:
        raise ConfigError(f"the model in {model_dir} does not record its training source, so the gate has no "
                          "training items to check the bundle on", hint="pass --check-on with the training data")
    if check_on is None and not Path(source).exists():
        raise ConfigError(f"the training source the model records ({source}) no longer exists, so the gate has no "
                          "training items to check the bundle on", hint="pass --check-on with the training data")
    from ..sequences.backbone import backbone_vocabulary

    items = _Source(source, engine, backbone_vocabulary(reader_options, spec, engine))
    gate_provider = _gate_provider(precision)
    calibration = ([it.payload for it in items.take(range(128))] if precision == "int8" and spec.modality != "text"
                   else None)
    whole_int8 = precision == "int8" and model_precision != "int8" and spec.modality == "text"
    exported = export(spec, "fp32" if whole_int8 else precision, settings=engine.settings, engine=engine,
                      calibration=calibration)

    from .assemble import assemble, set_metadata
    from .head_graph import SCORES_KIND, head_graph, head_kind
    from .loader import CPU_DISABLED_OPTIMIZERS

    pre, not_in_graph = _preprocessing_graph(spec)
    tokenizer_json, tokenizer_meta, text_feed = None, None, None
    if spec.modality == "text":
        tokenizer_meta = {"in_graph": True}
    if not_in_graph is not None:  # the tokenizer ships beside the bundle, which takes the backbone's inputs
        from tokenizers import Tokenizer

        from .loader import encode_texts
        from .tokenizer_beside import configured_tokenizer, metadata as tokenizer_metadata

        tokenizer_json, pad_id = configured_tokenizer(spec)
        tokenizer_meta = tokenizer_metadata(spec, beside(out), pad_id, not_in_graph)
        shipped = Tokenizer.from_str(tokenizer_json)
        text_feed = lambda texts: encode_texts(shipped, texts, pad_id, spec.preprocessing.inputs)  # noqa: E731
    proto = assemble(pre, exported.path, head_graph(model, spec.dim), spec.output_name, {})
    # dynamic int8 (text) scales each call by its own values' range, so a bundle call and headstart's batches
    # round differently: an int8 text bundle is gated on the validation split even when the model is int8 too
    exact = precision == model_precision and not (precision == "int8" and spec.modality == "text")
    gate_args = (items, sample, not exact, engine)
    gate_kwargs = {"cuda": gate_provider == "CUDAExecutionProvider", "text_feed": text_feed}
    quantization: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    if whole_int8:  # the whole backbone int8, gated on the task; else the backbone's int8 export (.quantize)
        from .quantize import WHOLE_INT8_METHOD, backbone_node_names, quantize_backbone_nodes

        whole, names = quantize_backbone_nodes(proto, backbone_node_names(exported.path), out.parent)
        quantization = {"where": "bundle", "method": WHOLE_INT8_METHOD, "nodes": len(names),
                        "from_fp32_backbone": exported.fingerprint}
        try:
            if not names:
                raise BundleError("the backbone has no MatMul or Attention to quantise")
            parity, notes = _gate(model, spec, pre, whole.SerializeToString(), *gate_args, **gate_kwargs)
            proto = whole
        except (gate.ExportParityError, BundleError) as exc:
            quantization = {"where": "backbone export", "refused": {"method": WHOLE_INT8_METHOD,
                                                                    "reason": exc.message}}
            exported = export(spec, "int8", settings=engine.settings, engine=engine, calibration=calibration)
            proto = assemble(pre, exported.path, head_graph(model, spec.dim), spec.output_name, {})
    if parity is None:
        try:
            parity, notes = _gate(model, spec, pre, proto.SerializeToString(), *gate_args, **gate_kwargs)
        except gate.ExportParityError as exc:
            refused = (quantization or {}).get("refused")
            if refused is None:
                raise
            raise gate.ExportParityError(f"{exc.message}; before it, the whole-int8 graph was refused: "
                                         f"{refused['reason']}", hint=exc.hint, details=exc.details) from None
    if quantization is not None:
        parity["quantization"] = quantization
    if precision == "fp16":
        parity["provider"] = gate_provider
        if gate_provider != "CUDAExecutionProvider":
            notes.append("the fp16 bundle was checked on the CPU provider (no CUDA here): onnxruntime runs its fp16 "
                         "ops there through inserted casts to float32, so on CUDA its figures may differ slightly; "
                         "fp16 pays off on a GPU - on the CPU an fp32 or int8 bundle is faster")
    metadata = {
        "headstart_version": _version(), "modality": spec.modality, "classes": [str(c) for c in model.classes],
        "backbone": {"name": spec.name, "fingerprint": exported.fingerprint, "precision": precision,
                     "source": spec.source, "dim": spec.dim},
        "head": {"ref": model.manifest["head"].get("ref"), "name": model.manifest["head"].get("name")},
        "inputs": _inputs_doc(spec, tokenizer_meta), "probabilities": SCORES_KIND[head_kind(model)],
        "parity": parity, "model_created": model.manifest.get("created"),
        "onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL",
                        "disabled_optimizers_on_cpu": list(CPU_DISABLED_OPTIMIZERS)},
        **({"tokenizer": tokenizer_meta} if tokenizer_meta else {}),
    }
    set_metadata(proto, metadata)  # the graph the gate ran, now with its figures
    data = proto.SerializeToString()
    if tokenizer_json is not None:
        write_bytes_atomic(beside(out), tokenizer_json.encode("utf-8"))
        notes.append(f"the tokenizer cannot be expressed as graph ops ({not_in_graph}): the bundle takes "
                     f"{', '.join(spec.preprocessing.inputs)} and its tokenizer is written beside it as "
                     f"{beside(out)} (load_bundle uses it; keep the two files together)")
    write_bytes_atomic(out, data)
    return BundleReport(out, len(data), precision, spec.modality, str(model.manifest["head"].get("ref")), parity,
                        time.perf_counter() - started, notes, beside(out) if tokenizer_json is not None else None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headstart")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _gate_provider(precision: str) -> str:
    """Where the gate runs the bundle: fp16 on CUDA when onnxruntime has it (where fp16 bundles are meant to
    run), else - and for fp32/int8 always - on the CPU provider, which runs fp16 graphs through inserted casts."""
    if precision != "fp16":
        return "CPUExecutionProvider"
    import onnxruntime as ort

    from ..backbones.runtime import _cuda_driver_loadable

    if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_driver_loadable():
        return "CUDAExecutionProvider"
    return "CPUExecutionProvider"


def _inputs_doc(spec: Any, tokenizer: dict[str, Any] | None = None) -> str:
    if spec.modality == "text" and tokenizer and not tokenizer.get("in_graph", True):
        return (f"{', '.join(spec.preprocessing.inputs)}: int64 [n, tokens] from the tokenizer shipped beside this "
                f"file ({tokenizer['file']}: special tokens added, cut at {spec.preprocessing.max_length} tokens), "
                f"padded with {tokenizer['pad_id']} to the longest; attention_mask 1 on tokens"
                + (", token_type_ids 0" if "token_type_ids" in spec.preprocessing.inputs else ""))
    if spec.modality == "text":
        return f"text: string [n] (tokenised in the graph, cut at {spec.preprocessing.max_length} tokens)"
    if spec.modality == "image":
        p = spec.preprocessing
        return (f"image: uint8 [H, W, 3], one decoded RGB image of any size, or [H, W, 3 n]: n same-size images "
                f"stacked on the channel axis (shorter side to {p.resize} bilinear as Pillow does, centre crop "
                f"{p.size}, normalised in the graph; one row of outputs per image)")
    return "the backbone's own inputs: " + ", ".join([spec.preprocessing.input_name]
                                                    + ([spec.preprocessing.mask_name] if spec.preprocessing.mask_name
                                                       else []))


def _preprocessing_graph(spec: Any) -> tuple[Any, str | None]:
    """(the preprocessing graph or None: the backbone's own inputs; why the tokenizer is not in the graph)."""
    if spec.modality == "text":
        from .text_graph import text_graph

        p = spec.preprocessing
        try:
            return text_graph(p.tokenizer, p.max_length, tuple(p.inputs), _pad_id(spec)), None
        except BundleError as exc:
            if not (exc.details or {}).get("tokenizer_not_in_graph"):
                raise
            return None, str(exc.details["tokenizer_not_in_graph"])
    if spec.modality == "image":
        from .image_graph import image_graph

        return image_graph(spec.preprocessing), None
    return None, None


def _pad_id(spec: Any) -> int:
    from ..backbones.preprocess import make_preprocessor

    pre = make_preprocessor(spec)
    pre._tokenizer()
    return int(pre._pad_id)


class _Source:
    """The gate's items, read in two passes so only the chosen items' payloads are held in memory:
    ``labels`` (one per readable item, in order) first, then ``take(positions)``."""

    def __init__(self, source: str | Path, engine: Any, reader_options: Any = None) -> None:
        self.source, self.engine, self.reader_options = source, engine, reader_options
        self.labels = [it.label for it in self._readable()]
        if not self.labels:
            raise ConfigError(f"{source} holds no readable items to check the bundle on",
                              hint="pass --check-on DATA")

    def _readable(self) -> Any:
        from ..embed.items import ReaderOptions
        from ..embed.sources import open_source

        options = self.reader_options or ReaderOptions()
        return (it for it in open_source(str(self.source), options, engine=self.engine) if it.payload is not None)

    def take(self, positions: Any) -> list[Any]:
        wanted = set(int(p) for p in positions)
        return [it for i, it in enumerate(self._readable()) if i in wanted]


def _spread(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(n, k)).round().astype(int).tolist())) if n else []


def _gate(model: Any, spec: Any, pre: Any, data: bytes, items: "_Source", sample: int, other_precision: bool,
          engine: Any, cuda: bool = False, text_feed: Any = None) -> tuple[dict[str, Any], list[str]]:
    """Run the gate (see :mod:`.gate`); returns the figures for the metadata and notes for the report."""
    from ..backbones.parity import probe_items
    from .feeds import bundle_runner, feed_of
    from .head_graph import reference_scores
    from ..train.direct import embed_items

    notes: list[str] = []
    run = bundle_runner(data, spec, cuda=cuda, text_feed=text_feed)
    if other_precision:  # on the CPU also as APIs that cannot turn off an optimiser run it (docs/deploy.md)
        defaults = None if cuda else bundle_runner(data, spec, text_feed=text_feed, disabled_optimizers=())
        return _gate_precision(model, spec, items, run, engine, defaults), notes
    chosen = items.take(_spread(len(items.labels), sample))
    groups = {"training": [it.payload for it in chosen], "probe": probe_items(spec)}
    refs = {"training": [it.ref for it in chosen], "probe": [f"probe item {i}" for i in range(len(groups["probe"]))]}
    figures: dict[str, Any] = {}
    tolerance = gate.IMAGE_MAX_ABS_DIFF if spec.modality == "image" else gate.MAX_ABS_DIFF
    for name, payloads in groups.items():
        reference = embed_items(model, payloads, engine=engine)
        keep = list(reference.ok)
        left_out: list[int] = []
        if spec.modality == "text" and pre is not None:
            differ = set(_token_differences(pre, spec, [payloads[i] for i in keep]))
            left_out = [keep[j] for j in sorted(differ)]
            if left_out and name == "training":
                shown = ", ".join(refs[name][i] for i in left_out[:3])
                raise gate.ExportParityError(
                    f"the in-graph tokenizer gives other token ids than headstart's for {len(left_out)} of "
                    f"{len(keep)} training items checked (e.g. {shown}); no file was written",
                    hint="see docs/deploy.md (known tokenizer differences); serve this model with `headstart predict`")
            vec_rows = [j for j in range(len(keep)) if j not in differ]
            keep = [keep[j] for j in vec_rows]
            vectors = reference.vectors[vec_rows]
        else:
            vectors = reference.vectors
        ref_scores = reference_scores(model, vectors)
        ref_labels = [str(v) for v in model.predict(vectors).labels] if len(vectors) else []
        labels, proba = run([feed_of(spec, payloads[i]) for i in keep])
        fig = gate.compare(ref_scores, ref_labels, proba, labels)
        limit = float("inf") if spec.modality == "image" and name == "probe" else tolerance
        gate.check_exact(fig, f"{name} items", [refs[name][i] for i in keep], limit)
        if spec.modality == "image":
            fig["max_pixel_levels"] = _pixel_levels(pre, spec, [payloads[i] for i in keep], refs[name], keep)
        fig["label_mismatches"] = len(fig["label_mismatches"])
        fig["worst_item"] = refs[name][keep[fig["worst_item"]]] if fig["worst_item"] is not None else None
        if left_out:
            fig["tokenizer_differences"] = [refs[name][i] for i in left_out]
            notes.append(f"{len(left_out)} {name} texts tokenise differently in the graph (left out of the "
                         f"comparison): {', '.join(fig['tokenizer_differences'])}")
        figures[name] = fig
    figures["threshold_max_abs_diff"] = tolerance
    return figures, notes


def _pixel_levels(pre: Any, spec: Any, payloads: list[bytes], refs: list[str], keep: list[int]) -> int:
    """Largest difference, in 8-bit levels, between the in-graph resized pixels and headstart's; more than
    :data:`gate.MAX_PIXEL_LEVELS` fails the gate."""
    import onnxruntime as ort

    from ..embed.imaging import prepare_image
    from .feeds import decoded_pixels

    session = ort.InferenceSession(pre.SerializeToString(), providers=["CPUExecutionProvider"])
    step = float(np.max(np.asarray(spec.preprocessing.std))) * 255.0  # one level, normalised: 1 / (255 std)
    worst, worst_at = 0, 0
    for j, data in enumerate(payloads):
        got = session.run(None, {"image": decoded_pixels(data, spec.preprocessing)})[0][0]
        levels = int(round(float(np.abs(got - prepare_image(data, spec.preprocessing)).max()) * step))
        if levels > worst:
            worst, worst_at = levels, j
    if worst > gate.MAX_PIXEL_LEVELS:
        raise gate.ExportParityError(
            f"the in-graph image preprocessing differs from headstart's by {worst} 8-bit levels on "
            f"{refs[keep[worst_at]]} (at most {gate.MAX_PIXEL_LEVELS} accepted); no file was written",
            hint="report it with the image named; serve the model with `headstart predict` meanwhile")
    return worst


def _token_differences(pre: Any, spec: Any, texts: list[str]) -> list[int]:
    """Positions of ``texts`` whose in-graph token ids differ from headstart's tokenizer's."""
    import onnxruntime as ort

    from ..backbones.preprocess import make_preprocessor
    from .loader import session_options

    if not texts:
        return []
    session = ort.InferenceSession(pre.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    ids, mask = session.run(["input_ids", "attention_mask"], {"text": np.array(texts, dtype=object)})
    mine = make_preprocessor(spec).prepare_many(texts)
    return [i for i, t in enumerate(mine) if ids[i][mask[i] == 1].tolist() != t.ids.tolist()]


def _gate_precision(model: Any, spec: Any, items: "_Source", run: Any, engine: Any,
                    defaults: Any = None) -> dict[str, Any]:
    """int8/fp16: label agreement and accuracy against the model on its validation split, with the bundle's
    session settings (``run``) and, when given, onnxruntime's defaults (``defaults``): low-precision graphs
    round differently when onnxruntime fuses more, and other languages' APIs open bundles that way."""
    from ..train.direct import embed_items
    from ..train.splits import stratified_split
    from .feeds import feed_of

    labelled = [i for i, label in enumerate(items.labels) if label not in (None, "")]
    if not labelled:
        raise ConfigError("an int8/fp16 bundle is checked on the model's validation split, which needs labelled "
                          "items", hint="pass --check-on with the labelled training data")
    training = model.manifest.get("training") or {}
    y = np.asarray([str(items.labels[i]) for i in labelled], dtype=object)
    split = stratified_split(y, float(training.get("val_fraction", 0.2)), int(training.get("seed", 0)))
    rows = split.val if len(split.val) else np.arange(len(y))
    chosen = items.take([labelled[i] for i in rows])
    reference = embed_items(model, [it.payload for it in chosen], engine=engine)
    ref_labels = [str(v) for v in model.predict(reference.vectors).labels]
    chosen = [chosen[i] for i in reference.ok]
    feeds = [feed_of(spec, it.payload) for it in chosen]
    truth = [str(it.label) for it in chosen]
    model_acc = float(np.mean([a == b for a, b in zip(ref_labels, truth)]))
    figures: dict[str, Any] = {}
    for key, runner, what in (("validation", run, "int8/fp16"),
                              ("validation_onnxruntime_defaults", defaults,
                               "int8/fp16 (opened with onnxruntime's default optimisers)")):
        if runner is None:
            continue
        labels, _ = runner(feeds)
        bundle_acc = float(np.mean([a == b for a, b in zip(labels, truth)]))
        agreement = float(np.mean([a == b for a, b in zip(labels, ref_labels)]))
        gate.check_accuracy(model_acc, bundle_acc, agreement, what, len(chosen))
        figures[key] = {"items": len(chosen), "label_agreement": agreement, "model_accuracy": model_acc,
                        "bundle_accuracy": bundle_acc, "accuracy_delta_pt": round(100 * (bundle_acc - model_acc), 3)}
    return {**figures, "threshold_accuracy_drop_pt": 100 * gate.MAX_ACCURACY_DROP}
