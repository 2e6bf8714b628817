"""Run a bundle with numpy + onnxruntime alone (+ onnxruntime-extensions for text bundles that tokenise in the
graph, or ``tokenizers`` for those whose tokenizer ships beside the file).

This module imports nothing else from headstart and nothing heavy at import time, so a service can
``from headstart.engine.bundle.loader import load_bundle`` (or copy this file) where torch, faiss,
scikit-learn and pyarrow are absent. ``headstart.load_bundle`` is the same function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

#: The custom-op domain of onnxruntime-extensions (the in-graph tokenizer).
EXTENSIONS_DOMAIN = "ai.onnx.contrib"
#: onnxruntime graph optimisers a bundle runs faster without on the CPU provider (also in the bundle's metadata,
#: ``onnxruntime``): the transformer exports keep each residual Add apart from its LayerNormalization, which
#: onnxruntime would fuse again at load into its slower CPU SkipLayerNormalization kernel (docs/deploy.md, Speed).
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session_options(*, threads: int | None = None, needs_extensions: bool = True) -> Any:
    """onnxruntime SessionOptions with onnxruntime-extensions' ops registered when ``needs_extensions``:
    all graph optimisations, ``threads`` intra-op threads (None: onnxruntime's default, one per core), one
    inter-op thread, sequential execution, idle threads spinning (the lowest single-call latency)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if needs_extensions:
        try:
            from onnxruntime_extensions import get_library_path
        except ImportError:
            raise ImportError("this bundle tokenises text in the graph: pip install onnxruntime-extensions") from None
        opts.register_custom_ops_library(get_library_path())
    return opts


def open_session(model: str | Path | bytes, *, threads: int | None = None, providers: Sequence[str] | None = None,
                 needs_extensions: bool = True, disabled_optimizers: Sequence[str] | None = None) -> Any:
    """An onnxruntime InferenceSession of a bundle (a path or its bytes) with the settings it is meant to run
    with: :func:`session_options`, and :data:`CPU_DISABLED_OPTIMIZERS` when it runs on the CPU provider alone
    (``disabled_optimizers``: these instead; ``()`` = onnxruntime's defaults, as APIs without the option run it)."""
    import onnxruntime as ort

    providers = list(providers or ["CPUExecutionProvider"])
    on_cpu = all(p == "CPUExecutionProvider" for p in providers)
    if disabled_optimizers is None:
        disabled_optimizers = CPU_DISABLED_OPTIMIZERS if on_cpu else ()
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                session_options(threads=threads, needs_extensions=needs_extensions),
                                providers=providers, disabled_optimizers=list(disabled_optimizers))


class Bundle:
    """A loaded bundle: ``predict(items) -> (labels, probabilities)``; ``metadata`` is its metadata_props."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        try:
            import onnxruntime_extensions  # noqa: F401 - registered below when installed
            extensions = True
        except ImportError:
            extensions = False
        try:
            self.session = open_session(self.path, threads=threads, providers=providers, needs_extensions=extensions)
        except Exception as exc:
            if not extensions and EXTENSIONS_DOMAIN in str(exc):
                raise ImportError(f"{self.path} tokenises text in the graph: pip install onnxruntime-extensions") from exc
            raise
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {k: _maybe_json(v) for k, v in meta.items()}
        self.classes: list[str] = list(self.metadata.get("classes", []))
        self.inputs: list[str] = [i.name for i in self.session.get_inputs()]
        self.input = self.inputs[0]
        self.modality: str = self.metadata.get("modality", "text")
        tokenizer = self.metadata.get("tokenizer")
        #: text bundles whose tokenizer ships beside the file: (tokenizers.Tokenizer, its metadata)
        self.tokenizer: tuple[Any, dict[str, Any]] | None = None
        if self.modality == "text" and isinstance(tokenizer, dict) and not tokenizer.get("in_graph", True):
            self.tokenizer = (load_tokenizer(self.path.parent / tokenizer["file"]), tokenizer)

    def predict(self, items: Any, *, batch: bool = False) -> tuple[list[str], "Any"]:
        """Labels and probabilities (float32 [n, classes]) of ``items``: a list of strings (text), one
        decoded RGB uint8 image [H, W, 3] or a list of them (images), or the backbone's input arrays
        (numeric, as a dict). ``batch``: same-size images share a call (stacked on the channel axis); on the
        CPU one call per image measured faster (docs/deploy.md, Speed), hence off by default."""
        import numpy as np

        if self.modality == "text":
            texts = [items] if isinstance(items, str) else list(items)
            if not texts:
                return [], np.zeros((0, len(self.classes)), np.float32)
            if self.tokenizer is not None:
                feed = encode_texts(self.tokenizer[0], texts, self.tokenizer[1]["pad_id"], self.tokenizer[1]["inputs"])
            else:
                feed = {self.input: np.array(texts, dtype=object)}
            proba, labels = self.session.run(["probabilities", "label"], feed)
            return [str(v) for v in labels], proba
        if self.modality == "image":
            return self._predict_images([items] if isinstance(items, np.ndarray) and items.ndim == 3 else list(items),
                                        batch)
        proba, labels = self.session.run(["probabilities", "label"], dict(items))
        return [str(v) for v in labels], proba

    def _predict_images(self, images: list[Any], batch: bool) -> tuple[list[str], "Any"]:
        import numpy as np

        labels = [""] * len(images)
        proba = np.zeros((len(images), len(self.classes)), np.float32)
        if batch and self.session.get_inputs()[0].shape[-1] == 3:
            raise ValueError(f"{self.path} takes one image per call (made before batches were supported)")
        for rows, feed in image_feeds(images, batch=batch):
            got, names = self.session.run(["probabilities", "label"], feed)
            proba[rows] = got
            for row, name in zip(rows, names):
                labels[row] = str(name)
        return labels, proba


def load_tokenizer(path: str | Path) -> Any:
    """The ``tokenizers.Tokenizer`` a text bundle ships beside it (``<name>.tokenizer.json``)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(f"this bundle's tokenizer ships beside it ({path}): pip install tokenizers") from None
    if not Path(path).is_file():
        raise FileNotFoundError(f"this bundle's tokenizer {path} is missing: keep it beside the .onnx file "
                                "(headstart bundle writes both)")
    return Tokenizer.from_file(str(path))


def encode_texts(tokenizer: Any, texts: list[str], pad_id: int, inputs: Sequence[str]) -> dict[str, Any]:
    """``texts`` -> the backbone's inputs as headstart makes them: special tokens, truncation as configured in
    the tokenizer file, padded with ``pad_id`` to the longest, ``attention_mask`` 1 on tokens,
    ``token_type_ids`` 0."""
    import numpy as np

    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    width = max((len(e.ids) for e in encodings), default=0)
    ids = np.full((len(encodings), width), int(pad_id), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: arrays[name] for name in inputs}


#: Same-size images per call of an image bundle (stacked on the channel axis of its ``image`` input).
IMAGE_BATCH = 16


def image_feeds(images: list[Any], batch: bool = True, size: int = IMAGE_BATCH) -> list[tuple[list[int], dict[str, Any]]]:
    """(rows, feed) per bundle call for decoded RGB uint8 ``images``: same-size images go together (up to
    ``size`` a call) as ``image`` [H, W, 3 n], stacked on the channel axis, when ``batch``; the others one by
    one as [H, W, 3]."""
    import numpy as np

    arrays = [np.ascontiguousarray(im, np.uint8) for im in images]
    if not batch:
        return [([i], {"image": a}) for i, a in enumerate(arrays)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    calls = []
    for rows in groups.values():
        for start in range(0, len(rows), size):
            part = rows[start:start + size]
            calls.append((part, {"image": np.concatenate([arrays[i] for i in part], axis=2)}))
    return calls


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def load_bundle(path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None) -> Bundle:
    """Load the ONNX bundle written by ``headstart bundle``; see :class:`Bundle`."""
    return Bundle(path, threads=threads, providers=providers)
