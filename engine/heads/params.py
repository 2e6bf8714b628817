"""Head parameters checked before any work: values, nested estimators and the memory a head will need.

:func:`validate_head` runs on every head :func:`headstart.engine.heads.resolve.build_head` builds
(built-in, scikit-learn or third-party) and again in :meth:`Head.fit`:

* scikit-learn estimators (and headstart heads, see :meth:`Head._param_constraints`) check their
  parameters with scikit-learn's own constraint machinery (``_validate_params``);
* parameters that must hold estimators (``estimators``, ``steps``, ...) must be non-empty lists of
  ``(name, estimator)`` pairs — a head reference's literals cannot express them;
* a head that can estimate its memory (``memory_estimate(n_features, n_classes)``) is refused above
  :func:`memory_budget` bytes (``HEADSTART_HEAD_MEMORY_GB``, default 8 GiB) before it allocates.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError

ESTIMATOR_LIST_PARAMS = ("estimators", "steps", "transformer_list")
ESTIMATOR_PARAMS = ("estimator", "base_estimator", "final_estimator")
DEFAULT_MEMORY_GB = 8.0
ENV_MEMORY = "HEADSTART_HEAD_MEMORY_GB"


def memory_budget() -> int:
    """Bytes a head may plan to allocate (``HEADSTART_HEAD_MEMORY_GB``, default 8)."""
    text = os.environ.get(ENV_MEMORY, "").strip()
    try:
        gb = float(text) if text else DEFAULT_MEMORY_GB
    except ValueError:
        raise ConfigError(f"{ENV_MEMORY}={text!r} is not a number", hint="set it to a size in GiB, e.g. 16") from None
    return int(gb * (1 << 30))


def _name(estimator: Any, label: str | None) -> str:
    return label or type(estimator).__name__


def _is_estimator(value: Any) -> bool:
    return hasattr(value, "fit") and hasattr(value, "get_params") and not isinstance(value, type)


def _check_nested(estimator: Any, label: str) -> None:
    params = estimator.get_params(deep=False) if hasattr(estimator, "get_params") else {}
    hint = "a head reference holds only literals; build such a head in Python and pass the estimator itself"
    for key in ESTIMATOR_LIST_PARAMS:
        if key not in params or params[key] is None:
            continue
        value = params[key]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"head '{label}': parameter '{key}' must be a non-empty list of (name, estimator) "
                              f"pairs, got {value!r}", hint=hint)
        for pair in value:
            ok = isinstance(pair, (list, tuple)) and len(pair) in (2, 3) and isinstance(pair[0], str) and (
                _is_estimator(pair[1]) or pair[1] in ("drop", "passthrough"))
            if not ok:
                raise ConfigError(f"head '{label}': parameter '{key}' holds {pair!r}, not a (name, estimator) pair",
                                  hint=hint)
    for key in ESTIMATOR_PARAMS:
        value = params.get(key)
        if value is not None and not _is_estimator(value) and not (isinstance(value, str) and value == "passthrough"):
            raise ConfigError(f"head '{label}': parameter '{key}' must be an estimator, got {value!r}", hint=hint)


def check_memory(estimator: Any, n_features: int | None, n_classes: int | None, label: str | None = None) -> None:
    """Refuse a head whose ``memory_estimate`` exceeds :func:`memory_budget` (sizes None: not known yet,
    the smallest possible ones give a lower bound)."""
    estimate = getattr(estimator, "memory_estimate", None)
    if estimate is None:
        return
    known = n_features is not None and n_classes is not None
    needed = estimate(n_features or 1, n_classes or 2)
    budget = memory_budget()
    if needed is not None and needed > budget:
        sizes = f"with {n_features} features and {n_classes} classes" if known else "whatever the data"
        raise ConfigError(
            f"head '{_name(estimator, label)}' would need {'about' if known else 'at least'} "
            f"{needed / (1 << 30):,.1f} GiB {sizes}, over the {budget / (1 << 30):,.1f} GiB head memory budget",
            hint=f"use smaller layers, or raise {ENV_MEMORY} if the machine has the memory")


def validate_head(estimator: Any, label: str | None = None) -> Any:
    """Check ``estimator``'s parameters (see the module docstring); return it. One-line ConfigErrors."""
    label = _name(estimator, label)
    validate = getattr(estimator, "_validate_params", None)
    if callable(validate):
        try:
            validate()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"head '{label}': {exc}".replace("\n", " "),
                              hint=f"see the parameters of {type(estimator).__name__}") from None
    _check_nested(estimator, label)
    check_memory(estimator, None, None, label)
    return estimator
