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
    from ..backbones.resolve import resolve_backbone
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
    vectors, at, failed = _encode_once(items, spec, exported, device, threads, batch_size)
    rows, keys, refs, errors = [], [], [], []
    for item in items:  # one row per item, duplicates included, in the source's order (as the store path)
        if item.error is not None:
            errors.append(error_record(item.key, item.ref, item.error, "read"))
        elif item.key in failed:
            errors.append(error_record(item.key, item.ref, failed[item.key].reason, failed[item.key].stage))
        else:
            rows.append(at[item.key])
            keys.append(item.key)
            refs.append(item.ref)
    return FeatureSet(keys, refs, None, vectors=vectors[rows], errors=errors, fingerprint=exported.fingerprint,
                      backbone=spec.name, precision=precision)


def _encode_once(items: list[Any], spec: Any, exported: Any, device: str, threads: int | None,
                 batch_size: int | None) -> tuple[np.ndarray, dict[str, int], dict[str, Any]]:
    """(vectors, key -> row of ``vectors``, key -> error record) for the readable ``items``, each distinct
    content once, through the store path's preprocessing and length-sorted batches."""
    from ..backbones.preprocess import make_preprocessor
    from ..backbones.runtime import Encoder
    from ..embed.encode import batch_settings, encode_prepared

    todo: dict[str, Any] = {}
    for item in items:
        if item.error is None:
            todo.setdefault(item.key, item)
    if not todo:
        return np.zeros((0, spec.dim), np.float32), {}, {}
    pre = make_preprocessor(spec)
    prepared = pre.prepare_many([item.payload for item in todo.values()])
    encoder = None
    if any(not isinstance(p, BaseException) for p in prepared):
        encoder = Encoder(exported, device=device, threads=threads)
    size, max_tokens = batch_settings(spec.modality, encoder.device if encoder else "cpu", batch_size)
    out = encode_prepared([(0, prepared)], list(todo), [item.ref for item in todo.values()], pre,
                          encoder.run if encoder else _no_session, spec.dim, size, max_tokens)
    vectors = out.vectors if out.vectors is not None else np.zeros((0, spec.dim), np.float32)
    return vectors, {key: row for row, key in enumerate(out.keys)}, {r.key: r for r in out.errors}


def _no_session(inputs: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - no prepared item to run
    raise AssertionError("no item was prepared, so no batch runs")


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
