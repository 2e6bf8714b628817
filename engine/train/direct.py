"""What ``headstart predict`` computes for raw items, without the feature store: the backbone's own
preprocessing, its cached export on onnxruntime (the model's precision, CPU) and the fitted head.

The bundle's parity gate (:mod:`headstart.engine.bundle.gate`) compares bundles with it. ``headstart predict``'s
fast path for small sources is :mod:`.fastpath` (it reads and batches exactly as the store path does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ItemError

#: Items per batch (the pipeline's text batch: padding to the longest in a batch changes vectors ~1e-7).
BATCH = 16


@dataclass
class ReferenceOutput:
    vectors: np.ndarray  # (n_ok, dim) float32, rows of the items that could be prepared
    ok: list[int]  # positions of those items among the inputs
    errors: dict[int, ItemError]  # position -> why the item could not be prepared


def embed_items(model: Any, payloads: list[Any], *, engine: Any = None, threads: int | None = None) -> ReferenceOutput:
    """Vectors of raw ``payloads`` (texts, image file bytes, arrays) through the model's backbone."""
    from ..backbones.export import export, find_export
    from ..backbones.preprocess import make_preprocessor
    from ..backbones.resolve import resolve_backbone
    from ..backbones.runtime import Encoder
    from ..plugins import get_engine

    engine = engine or get_engine()
    model.ensure_backbone(engine)
    spec = resolve_backbone(model.backbone["name"], engine)
    precision = model.backbone.get("precision", "fp32")
    exported = find_export(spec, precision, engine.settings) or export(spec, precision, settings=engine.settings,
                                                                        engine=engine)
    pre = make_preprocessor(spec)
    prepared = pre.prepare_many(list(payloads))
    ok = [i for i, p in enumerate(prepared) if not isinstance(p, Exception)]
    errors = {i: p for i, p in enumerate(prepared) if isinstance(p, Exception)}
    if not ok:
        return ReferenceOutput(np.zeros((0, spec.dim), np.float32), ok, errors)
    encoder = Encoder(exported, device="cpu", threads=threads)
    order = sorted(ok, key=lambda i: pre.length(prepared[i]))  # length buckets, as the pipeline batches
    rows = {}
    for start in range(0, len(order), BATCH):
        part = order[start:start + BATCH]
        out = encoder.run(pre.collate([prepared[i] for i in part]))
        rows.update(zip(part, out))
    return ReferenceOutput(np.stack([rows[i] for i in ok]).astype(np.float32), ok, errors)
