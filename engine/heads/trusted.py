"""The exact types a ``head.skops`` file may hold without ``trust=True``.

skops refuses to build any type it does not trust; :func:`skops.io.get_untrusted_types` lists the
types a file holds beyond skops' own default-trusted set (scikit-learn estimators, numpy arrays,
dtypes and ufuncs, scipy sparse matrices, builtin containers). headstart adds *exact* type names,
never module prefixes (a prefix such as ``builtins.`` or ``numpy.`` also admits ``builtins.eval``
or a numpy function that writes files):

* the head class the head plugin builds for the manifest's head reference, and the estimators
  nested in its parameters (a pipeline's steps);
* :data:`FITTED_TYPES`: the internal classes scikit-learn classifiers keep as fitted attributes
  (trees, tree predictors, neighbour trees, optimiser state, calibrators, Bunch), plus every
  subclass of scikit-learn's Gaussian-process ``Kernel`` and ``DistanceMetric64``.

These are classes holding data; none of them is a function, so no file can call one.
"""

from __future__ import annotations

from typing import Any, Iterable

FITTED_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.utils._bunch.Bunch",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.multiclass._ConstantPredictor",
    "sklearn.gaussian_process._gpc._BinaryGaussianProcessClassifierLaplace",
)

UNTRUSTED = {"sklearn.metrics._dist_metrics.PyFuncDistance64"}  # wraps an arbitrary Python callable


def type_name(cls: type) -> str:
    """``module.QualName``, the way skops names a type."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _subclass_names(base: type) -> set[str]:
    found, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("sklearn.") and type_name(sub) not in found | UNTRUSTED:
                found.add(type_name(sub))
                todo.append(sub)
    return found


def _estimator_types(obj: Any) -> set[str]:
    """The class of ``obj`` and of every estimator nested in its parameters."""
    names: set[str] = set()
    todo = [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, (list, tuple)):
            todo.extend(item)
            continue
        if not hasattr(item, "get_params") or isinstance(item, type):
            continue
        if type_name(type(item)) in names:
            continue
        names.add(type_name(type(item)))
        try:
            todo.extend(item.get_params(deep=False).values())
        except Exception:  # noqa: BLE001 - a head whose get_params fails adds nothing more
            pass
    return names


def trusted_types(template: Any = None) -> set[str]:
    """Every type name a skops head may hold: :data:`FITTED_TYPES`, scikit-learn's kernels and
    distance metrics, and the classes of ``template`` (an unfitted head built from the manifest)."""
    from sklearn.gaussian_process.kernels import Kernel
    from sklearn.metrics._dist_metrics import DistanceMetric64

    names = set(FITTED_TYPES) | _subclass_names(Kernel) | _subclass_names(DistanceMetric64)
    if template is not None:
        names |= _estimator_types(template)
    return names


def refused_types(found: Iterable[str], template: Any = None) -> list[str]:
    """The names in ``found`` (from ``skops.io.get_untrusted_types``) that are not trusted."""
    allowed = trusted_types(template)
    return sorted(t for t in found if t not in allowed)
