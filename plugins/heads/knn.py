"""``knn``: k-nearest neighbours over an exact FAISS inner-product index of the training vectors.

``metric='cosine'`` normalises vectors first (inner product = cosine); ``'ip'`` uses raw inner
products. ``weights='uniform'`` counts votes; ``'distance'`` weights a neighbour by
``1 / (1 - cos + 1e-6)`` (cosine) or ``exp(ip - best ip)`` (ip). Saved as safetensors (vectors
and labels); the index is rebuilt on load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.sdk import ConfigError, Head, HeadSpec, hookimpl


class KNNHead(Head):
    """k-nearest-neighbour vote over FAISS (exact inner product)."""

    def __init__(self, *, k: int = 10, metric: str = "cosine", weights: str = "distance") -> None:
        self.k = k
        self.metric = metric
        self.weights = weights

    @classmethod
    def _param_constraints(cls) -> dict[str, list[Any]]:
        from numbers import Integral

        from headstart.sdk import Interval, Options

        return {"k": [Interval(Integral, 1, None, closed="left")], "metric": [Options({"cosine", "ip"})],
                "weights": [Options({"uniform", "distance"})]}

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            return np.ascontiguousarray(X / np.maximum(norms, 1e-12), dtype=np.float32)
        if self.metric == "ip":
            return X
        raise ConfigError(f"knn metric must be 'cosine' or 'ip', got {self.metric!r}")

    def _fit(self, X: np.ndarray, y_idx: np.ndarray) -> None:
        if self.weights not in ("uniform", "distance"):
            raise ConfigError(f"knn weights must be 'uniform' or 'distance', got {self.weights!r}")
        if int(self.k) < 1:
            raise ConfigError(f"knn k must be at least 1, got {self.k}")
        self.vectors_ = self._prepare(X)
        self.labels_ = y_idx.astype(np.int64)
        self.index_ = None

    def _index(self) -> Any:
        if self.index_ is None:
            import faiss

            index = faiss.IndexFlatIP(self.vectors_.shape[1])
            index.add(self.vectors_)
            self.index_ = index
        return self.index_

    def _proba(self, X: np.ndarray) -> np.ndarray:
        k = min(int(self.k), len(self.labels_))
        sims, idx = self._index().search(self._prepare(X), k)
        if self.weights == "uniform":
            w = np.ones_like(sims)
        elif self.metric == "cosine":
            w = 1.0 / (1.0 - sims + 1e-6).clip(min=1e-6)
        else:
            w = np.exp(sims - sims[:, :1])
        proba = np.zeros((len(X), len(self.classes_)), np.float64)
        np.add.at(proba, (np.repeat(np.arange(len(X)), k), self.labels_[idx].ravel()), w.ravel())
        return (proba / proba.sum(axis=1, keepdims=True)).astype(np.float32)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"vectors": self.vectors_, "labels": self.labels_}, {"classes": self.classes_.tolist()}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.vectors_ = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
        self.labels_ = arrays["labels"].astype(np.int64)
        self.classes_ = np.asarray(meta["classes"])
        self.n_features_in_ = self.vectors_.shape[1]
        self.index_ = None


@hookimpl
def register_heads(register):
    register(HeadSpec(
        name="knn",
        factory=KNNHead,
        description="k-nearest neighbours over an exact FAISS inner-product index (cosine or ip)",
    ))
