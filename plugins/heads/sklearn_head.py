"""``sklearn:<Name or dotted path>(params)``: any scikit-learn classifier, e.g.
``sklearn:LogisticRegression(C=2.0)`` or ``sklearn:sklearn.svm.SVC(probability=True)``.

Resolved safely: the path must lie in a ``sklearn`` module, the name must be public and
must be a classifier class; parameters are literals (parsed by :func:`headstart.engine.heads.parse_head_ref`).
Nothing is evaluated. Models are saved with skops and loaded with a trusted-type list.
"""

from __future__ import annotations

import importlib
from typing import Any

from headstart.sdk import ConfigError, HeadSpec, hookimpl


def resolve_classifier(name: str) -> type:
    """The scikit-learn classifier class named ``name`` (``SVC``) or ``sklearn.svm.SVC``."""
    if "." in name:
        module_name, _, cls_name = name.rpartition(".")
        if module_name != "sklearn" and not module_name.startswith("sklearn."):
            raise ConfigError(f"sklearn head '{name}': only classes from scikit-learn modules are allowed",
                              hint="write sklearn:LogisticRegression or sklearn:sklearn.svm.SVC")
        if any(part.startswith("_") for part in name.split(".")):
            raise ConfigError(f"sklearn head '{name}': private modules and names are not allowed")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):
            raise ConfigError(f"sklearn head '{name}': no such class in scikit-learn") from None
    else:
        from sklearn.utils import all_estimators

        found = dict(all_estimators(type_filter="classifier"))
        if name not in found:
            from headstart.sdk import did_you_mean

            guess = did_you_mean(name, found)
            raise ConfigError(f"sklearn head '{name}': not a scikit-learn classifier"
                              + (f"; did you mean '{guess}'?" if guess else ""),
                              hint="see sklearn.utils.all_estimators(type_filter='classifier')")
        cls = found[name]
    from sklearn.base import BaseEstimator, ClassifierMixin

    if not (isinstance(cls, type) and issubclass(cls, BaseEstimator) and issubclass(cls, ClassifierMixin)):
        raise ConfigError(f"sklearn head '{name}' is not a scikit-learn classifier")
    return cls


def build(arg: str, **params: Any) -> Any:
    """An unfitted scikit-learn classifier ``arg`` with ``params``."""
    cls = resolve_classifier(arg)
    valid = cls._get_param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"sklearn head '{arg}' has no parameter(s) {', '.join(unknown)}",
                          hint=f"valid parameters: {', '.join(sorted(valid))}")
    return cls(**params)


@hookimpl
def register_heads(register):
    register(HeadSpec(
        name="sklearn",
        factory=build,
        description="any scikit-learn classifier: sklearn:<Name or sklearn.module.Name>(key=value, ...)",
        takes_arg=True,
    ))
