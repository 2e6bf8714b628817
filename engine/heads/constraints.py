"""Parameter constraints of heads, checked without importing scikit-learn.

A head declares, per parameter, the values it accepts (:meth:`headstart.sdk.Head._param_constraints`):
``Interval(Real, 0, None, closed="left")``, ``Options({"balanced"})``, a type (``str``, ``dict``) or ``None``;
a value is valid when it satisfies one of them. :func:`validate_constraints` checks them and raises
:class:`InvalidParameterError` (a ``ValueError`` and a ``TypeError``, as scikit-learn's) with scikit-learn's
wording. The same declarations written with scikit-learn's own ``Interval``/``StrOptions`` still work: such a
list is handed to scikit-learn's checker. Importing scikit-learn costs most of a second, which a
command-line run of a few seconds (a few-shot fine-tune, a prediction) would otherwise pay for a range check.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any, Iterable, Literal


class InvalidParameterError(ValueError, TypeError):
    """A parameter's value satisfies none of its constraints."""


@dataclass(frozen=True)
class Interval:
    """Numbers of ``type`` (``numbers.Real`` or ``numbers.Integral``) between ``left`` and ``right`` (``None``:
    unbounded); ``closed``: which ends belong to it (``"left"``, ``"right"``, ``"both"``, ``"neither"``)."""

    type: type
    left: float | None
    right: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"

    @property
    def closed_left(self) -> bool:
        return self.closed in ("left", "both")

    @property
    def closed_right(self) -> bool:
        return self.closed in ("right", "both")

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, self.type):
            return False
        if self.left is not None and (value < self.left or (value == self.left and not self.closed_left)):
            return False
        return not (self.right is not None and (value > self.right or (value == self.right and not self.closed_right)))

    def __str__(self) -> str:
        def bound(x: float | None, unbounded: str) -> str:
            return unbounded if x is None else (f"{x}" if self.type is Integral else f"{float(x)}")

        lb = "[" if self.left is not None and self.closed_left else "("
        rb = "]" if self.right is not None and self.closed_right else ")"
        kind = "an int" if self.type is Integral else "a float"
        return f"{kind} in the range {lb}{bound(self.left, '-inf')}, {bound(self.right, 'inf')}{rb}"


@dataclass(frozen=True)
class Options:
    """One of ``values`` (strings, as scikit-learn's ``StrOptions``)."""

    values: frozenset[Any]

    def __init__(self, values: Iterable[Any]) -> None:
        object.__setattr__(self, "values", frozenset(values))

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "a str among {" + ", ".join(repr(v) for v in sorted(self.values)) + "}"


def _describe(constraint: Any) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return f"an instance of '{constraint.__qualname__}'"
    return str(constraint)


def _satisfied(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint)
    return constraint.is_satisfied_by(value)


def _own(constraint: Any) -> bool:
    return constraint is None or isinstance(constraint, (type, Interval, Options))


def validate_constraints(constraints: dict[str, list[Any]], params: dict[str, Any], caller: str) -> None:
    """Check every parameter named in ``constraints`` (see the module docstring); raise
    :class:`InvalidParameterError` for the first one whose value satisfies none of its constraints."""
    if not all(_own(c) for options in constraints.values() for c in options):
        from sklearn.utils._param_validation import validate_parameter_constraints

        validate_parameter_constraints(constraints, params, caller_name=caller)
        return
    for name, options in constraints.items():
        if name not in params or any(_satisfied(c, params[name]) for c in options):
            continue
        described = [_describe(c) for c in options]
        expected = described[0] if len(described) == 1 else f"{', '.join(described[:-1])} or {described[-1]}"
        raise InvalidParameterError(f"The {name!r} parameter of {caller} must be {expected}. "
                                    f"Got {params[name]!r} instead.")
