"""``Head``: scikit-learn's classifier protocol without importing scikit-learn.

``__init__`` only stores its keyword arguments; ``fit(X, y)`` sets ``classes_`` and
``n_features_in_`` (fitted attributes end in ``_``) and returns ``self``; ``get_params``,
``set_params`` and ``sklearn.base.clone`` work. Subclasses implement ``_fit(X, y_idx)``,
``_proba(X)`` and, for safe persistence, ``_state()`` / ``_set_state(arrays, meta)`` over their own fitted
attributes (``classes_`` and ``n_features_in_`` are saved and restored by the base class).

``X`` may be an array or a :class:`~headstart.engine.heads.features.FeatureMatrix` (rows read chunk by
chunk). A head with ``streams_features = True`` gets a FeatureMatrix in ``_fit`` and must read it
chunk by chunk; others get an array. ``_proba`` always gets an in-memory block of rows: prediction
runs chunk by chunk here.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, HeadError, NotFittedError
from .features import ArrayMatrix, FeatureMatrix, check_finite
from .validate import check_features, unique_inverse


#: Key under which :meth:`Head.saved_state` keeps the base attributes in a head's metadata.
BASE_STATE_KEY = "headstart_head"


class Head:
    """Base class of headstart's own heads (multi-class classifiers on feature vectors)."""

    _estimator_type = "classifier"
    streams_features = False  # True: _fit reads a FeatureMatrix chunk by chunk (memory flat in n)

    # -- the parameter protocol -------------------------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return sorted(p.name for p in params if p.name != "self" and p.kind in kinds)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> "Head":
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ConfigError(f"head {type(self).__name__} has no parameter '{name}'",
                                  hint=f"valid parameters: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    @classmethod
    def _param_constraints(cls) -> dict[str, list[Any]]:
        """Constraints per parameter (``headstart.sdk.Interval``, ``headstart.sdk.Options``, types, None; or
        scikit-learn's ``Interval``/``StrOptions``); override to declare them. Checked by :meth:`_validate_params`
        before any work."""
        return {}

    def _validate_params(self) -> None:
        """Check the parameters against :meth:`_param_constraints` (constraints.py: scikit-learn's rules and
        wording, without importing it), then :meth:`_check_params`; raises ``ValueError``/``TypeError`` naming
        the parameter."""
        constraints = self._param_constraints()
        if constraints:
            from .constraints import validate_constraints

            validate_constraints(constraints, self.get_params(deep=False), type(self).__name__)
        self._check_params()

    def _check_params(self) -> None:
        """Checks constraints cannot express (override; raise ValueError naming the parameter)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), input_tags=InputTags())

    # -- fit / predict --------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> "Head":
        """Fit on ``X`` (n, d: an array or a FeatureMatrix) and labels ``y`` (n,); returns ``self``."""
        from .params import check_memory, validate_head

        validate_head(self)
        X = check_finite(X)
        X = X if self.streams_features else (X.array if isinstance(X, ArrayMatrix) else np.asarray(X))
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise HeadError(f"{type(self).__name__}.fit: y has shape {y.shape}, expected ({len(X)},)")
        classes, y_idx = unique_inverse(y)
        if len(classes) < 2:
            raise DataError(f"{type(self).__name__}.fit: only one class ({classes[0]!r}) in the training data",
                            hint="a classifier needs at least two labelled classes")
        check_memory(self, X.shape[1], len(classes))
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self._fit(X, y_idx.astype(np.int64))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, (n, len(classes_)), columns in ``classes_`` order (computed chunk by chunk)."""
        if not isinstance(X, FeatureMatrix):
            return self._proba(self._check_predict(X))
        self._check_fitted(X.dim)
        if len(X) == 0:
            raise DataError("no prediction items", hint="check the source and its error records")
        out = np.empty((len(X), len(self.classes_)), np.float32)
        for positions, block in X.chunks():
            out[positions] = self._proba(self._check_predict(block))
        return out

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X: Any, y: Any) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def _check_predict(self, X: Any) -> np.ndarray:
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet", hint="call fit(X, y) first")
        X = check_features(X, what="prediction")
        self._check_fitted(X.shape[1])
        return X

    def _check_fitted(self, dim: int) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet", hint="call fit(X, y) first")
        if dim != self.n_features_in_:
            raise HeadError(f"{type(self).__name__} was fitted on {self.n_features_in_} features, got {dim}",
                            hint="predict with vectors from the backbone the head was trained on")

    # -- to implement ---------------------------------------------------------------
    def _fit(self, X: np.ndarray, y_idx: np.ndarray) -> None:
        raise NotImplementedError

    def _proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fitted state as named arrays (saved as safetensors) and JSON-able metadata.

        Only the subclass's own fitted attributes: ``classes_`` and ``n_features_in_`` are saved and
        restored by :meth:`saved_state` / :meth:`restore_state` for every head."""
        raise NotImplementedError

    @classmethod
    def has_safe_state(cls) -> bool:
        """Whether this class implements ``_state``/``_set_state`` (so it saves as safetensors, not pickle)."""
        return cls._state is not Head._state and cls._set_state is not Head._set_state

    def saved_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What :func:`~headstart.engine.heads.persist.save_head` writes: ``_state()`` plus the base attributes."""
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; there is nothing to save",
                                 hint="call fit(X, y) first")
        arrays, meta = self._state()
        if BASE_STATE_KEY in meta:
            raise HeadError(f"{type(self).__name__}._state() uses the reserved metadata key {BASE_STATE_KEY!r}",
                            hint="rename that key in the head's _state/_set_state")
        base = {"classes": np.asarray(self.classes_).tolist(), "n_features_in": int(self.n_features_in_)}
        return arrays, {**meta, BASE_STATE_KEY: base}

    def restore_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """The inverse of :meth:`saved_state`: base attributes first, then ``_set_state`` for the rest."""
        meta = dict(meta)
        base = meta.pop(BASE_STATE_KEY, None)
        if base is not None:
            self.classes_ = np.asarray(base["classes"])
            self.n_features_in_ = int(base["n_features_in"])
        self._set_state(arrays, meta)
        missing = [a for a in ("classes_", "n_features_in_") if not hasattr(self, a)]
        if missing:
            raise HeadError(f"the saved {type(self).__name__} does not restore {', '.join(missing)}",
                            hint="it was saved by an older headstart; retrain it")

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        raise NotImplementedError


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is an error.

    ``cpu`` does not import torch (a head fitted with numpy on the CPU never needs it); ``auto`` and ``cuda``
    ask torch."""
    if device == "cpu":
        return device
    if device != "auto" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device '{device}'", hint="use 'cpu', 'cuda' or 'auto'")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise HeadError(f"device '{device}' was asked for, but torch sees no CUDA GPU",
                        hint="use device='cpu' or 'auto'")
    return device


def class_weights(weight: Any, y_idx: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-class sample weights (float32, len(classes)) for ``None``, ``'balanced'`` or a {label: w} dict."""
    k = len(classes)
    if weight is None:
        return np.ones(k, np.float32)
    if weight == "balanced":
        counts = np.bincount(y_idx, minlength=k).astype(np.float64)
        return (len(y_idx) / (k * np.maximum(counts, 1))).astype(np.float32)
    if isinstance(weight, dict):
        unknown = [c for c in weight if c not in set(classes.tolist())]
        if unknown:
            raise ConfigError(f"class_weight names labels not in the data: {unknown}",
                              hint=f"labels: {classes.tolist()}")
        return np.array([float(weight.get(c, 1.0)) for c in classes.tolist()], np.float32)
    raise ConfigError(f"class_weight must be None, 'balanced' or a dict, got {weight!r}")
