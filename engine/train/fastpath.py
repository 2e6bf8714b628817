"""``headstart predict``'s fast path for small inputs: the source's items go through the model's backbone
session and head in memory, without the feature store (no store opened, locked or written).

The store pays off on large or repeated inputs (items already embedded need no session); on a few new items its
open, look-up and commit cost more than the items' encoding. :data:`FAST_PATH_MAX_ITEMS` is where the two meet,
measured by ``benchmarks/bench_predict.py`` (``predict_paths``; docs/deploy.md). The fast path reads, batches and
encodes exactly as the store path does (same reader, same length-sorted batches, same error records), so
its rows, keys, refs, labels and probabilities are those of the store path.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from ..heads.features import FeatureSet

#: Sources of at most this many items skip the feature store (``predict(store=None)``, the default); measured
#: crossover: see docs/deploy.md (Predicting without the store).
FAST_PATH_MAX_ITEMS = 1000
#: ... and whose payloads (text, image file bytes, arrays) hold at most this many bytes, all held in memory at once.
FAST_PATH_MAX_BYTES = 64 * 2**20


def in_memory_features(model: Any, source: Any, *, limit: int | None = FAST_PATH_MAX_ITEMS,
                       max_bytes: int | None = FAST_PATH_MAX_BYTES, engine: Any = None,
                       reader_options: Any = None, reader: str | None = None, device: str = "auto",
                       batch_size: int | None = None, threads: int | None = None, labelled: bool | None = False,
                       **_ignored: Any) -> FeatureSet | None:
    """The FeatureSet of ``source`` (a path or reader ref) embedded in memory by ``model``'s backbone, or
    ``None`` when ``source`` holds more than ``limit`` items or ``max_bytes`` of payloads (None: no bound), or
    is not a path/ref.

    Options not listed (``workers``, ``progress``, ``precision``) have no effect here: items are prepared in
    this process, and the backbone runs at the model's own precision."""
    if isinstance(source, np.ndarray) or hasattr(source, "vectors") or not model.backbone.get("name"):
        return None
    from ..backbones.export import export, find_export
    from ..backbones.preprocess import make_preprocessor
    from ..backbones.resolve import resolve_backbone
    from ..backbones.runtime import Encoder
    from ..embed.encode import batch_settings, encode_prepared
    from ..embed.items import ReaderOptions
    from ..embed.job import error_record
    from ..embed.sources import open_source
    from ..errors import ConfigError
    from ..plugins import get_engine
    from ..sequences.backbone import backbone_vocabulary

    engine = engine or get_engine()
    name = model.backbone["name"]
    options = reader_options or ReaderOptions()
    if labelled is not None:
        options = dataclasses.replace(options, labelled=labelled)
    options = backbone_vocabulary(options, name, engine)
    src = open_source(str(source), options, reader=reader, engine=engine)
    items = _take(src, limit, max_bytes)
    if items is None:
        return None
    spec = resolve_backbone(name, engine)
    if spec.modality != src.modality:
        raise ConfigError(f"backbone '{spec.name}' embeds {spec.modality}, but {source} holds {src.modality} items",
                          hint=f"predict {spec.modality} items with this model")
    model.ensure_backbone(engine)  # the export exists and has the model's fingerprint
    precision = model.backbone.get("precision", "fp32")
    exported = find_export(spec, precision, engine.settings) or export(spec, precision, settings=engine.settings,
                                                                        engine=engine)
    failed: dict[str, Any] = {}  # key -> error record (read errors are kept per row, below)
    todo: list[int] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.error is None and item.key not in seen:
            seen.add(item.key)
            todo.append(i)
    vectors = np.zeros((0, spec.dim), np.float32)
    at: dict[str, int] = {}
    if todo:
        pre = make_preprocessor(spec)
        prepared = pre.prepare_many([items[i].payload for i in todo])
        keys, refs = [items[i].key for i in todo], [items[i].ref for i in todo]
        encoder = None
        if any(not isinstance(p, BaseException) for p in prepared):
            encoder = Encoder(exported, device=device, threads=threads)
        size, max_tokens = batch_settings(spec.modality, encoder.device if encoder else "cpu", batch_size)
        out = encode_prepared([(0, prepared)], keys, refs, pre, encoder.run if encoder else None, spec.dim, size,
                              max_tokens)
        failed.update((record.key, record) for record in out.errors)
        if out.vectors is not None:
            vectors = out.vectors
        at = {key: row for row, key in enumerate(out.keys)}
    rows, row_keys, row_refs, errors = [], [], [], []
    for item in items:
        if item.error is not None:
            errors.append(error_record(item.key, item.ref, item.error, "read"))
        elif item.key in failed:
            errors.append(error_record(item.key, item.ref, failed[item.key].reason, failed[item.key].stage))
        else:
            rows.append(at[item.key])
            row_keys.append(item.key)
            row_refs.append(item.ref)
    return FeatureSet(row_keys, row_refs, None, vectors=vectors[rows] if rows else np.zeros((0, spec.dim), np.float32),
                      errors=errors, fingerprint=exported.fingerprint, backbone=spec.name, precision=precision)


def _take(src: Any, limit: int | None, max_bytes: int | None) -> list[Any] | None:
    """The items of ``src``, or None as soon as there are more than ``limit`` or their payloads pass ``max_bytes``."""
    items, size = [], 0
    for item in itertools.islice(iter(src), None if limit is None else limit + 1):
        items.append(item)
        payload = item.payload
        size += payload.nbytes if hasattr(payload, "nbytes") else len(payload) if payload is not None else 0
        if max_bytes is not None and size > max_bytes:
            return None
    return None if limit is not None and len(items) > limit else items
