"""``FeatureSet``: aligned keys, refs, labels and vectors — what heads train and predict on.

:func:`headstart.engine.embed.pipeline.embed` returns an object of the same shape (an ``EmbedResult``);
``FeatureSet.from_arrays`` wraps features you computed yourself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class FeatureSet:
    keys: list[str]
    refs: list[str]
    labels: list[str | None]
    vectors: np.ndarray  # (n, dim) float32
    errors: list[Any] = field(default_factory=list)
    fingerprint: str | None = None
    backbone: str | None = None
    precision: str = "fp32"
    stats: dict[str, Any] | None = None  # the embedding job's counts (cached, embedded, session_created, ...)

    @classmethod
    def from_arrays(cls, X: Any, y: Sequence[Any] | None = None, *, keys: Sequence[str] | None = None,
                    fingerprint: str | None = None, backbone: str | None = None) -> "FeatureSet":
        """Wrap your own vectors (rows keyed ``row 0``, ``row 1``, ... unless ``keys`` are given)."""
        X = np.asarray(X)
        names = list(keys) if keys is not None else [f"row {i}" for i in range(len(X))]
        labels = [None if v is None else str(v) for v in y] if y is not None else [None] * len(X)
        return cls(keys=names, refs=list(names), labels=labels, vectors=X, fingerprint=fingerprint,
                   backbone=backbone)

    @classmethod
    def coerce(cls, obj: Any) -> "FeatureSet":
        """A FeatureSet from an ``EmbedResult``-like object (``.keys .refs .labels .vectors ...``)."""
        if isinstance(obj, cls):
            return obj
        return cls(keys=list(obj.keys), refs=list(obj.refs), labels=list(obj.labels), vectors=np.asarray(obj.vectors),
                   errors=list(getattr(obj, "errors", []) or []), fingerprint=getattr(obj, "fingerprint", None),
                   backbone=getattr(obj, "backbone", None), precision=getattr(obj, "precision", "fp32") or "fp32",
                   stats=obj.stats.as_dict() if hasattr(getattr(obj, "stats", None), "as_dict") else None)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, rows: np.ndarray) -> "FeatureSet":
        rows = np.asarray(rows, dtype=np.int64)
        return FeatureSet(keys=[self.keys[i] for i in rows], refs=[self.refs[i] for i in rows],
                          labels=[self.labels[i] for i in rows], vectors=self.vectors[rows], errors=[],
                          fingerprint=self.fingerprint, backbone=self.backbone, precision=self.precision,
                          stats=self.stats)
