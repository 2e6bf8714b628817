"""What a head plugin registers, and how a head reference like ``mlp(hidden=256)`` is parsed.

A reference is ``NAME``, ``NAME(key=value, ...)``, ``NAME:ARG`` or ``NAME:ARG(key=value, ...)``;
values are Python literals read with :func:`ast.literal_eval` (numbers, strings, booleans,
``None``, tuples, lists, dicts), never evaluated as code.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError

_REF = re.compile(r"^\s*(?P<name>[A-Za-z_][\w\-]*)(?::(?P<arg>[A-Za-z_][\w.]*))?\s*(?:\((?P<params>.*)\))?\s*$", re.S)


@dataclass(frozen=True)
class HeadSpec:
    """A head plugin's registration.

    ``factory(arg, **params)`` returns an unfitted estimator that follows scikit-learn's
    contract. ``arg`` is the part after ``:`` in ``sklearn:LogisticRegression`` (``None``
    when absent); heads that take none should set ``takes_arg=False``.
    """

    name: str
    factory: Callable[..., Any] = field(compare=False, repr=False)
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # documented defaults; empty: read from the factory
    takes_arg: bool = False
    aliases: tuple[str, ...] = ()

    def build(self, arg: str | None = None, **params: Any) -> Any:
        if arg is not None and not self.takes_arg:
            raise ConfigError(f"head '{self.name}' takes no ':{arg}' argument", hint=f"use '{self.name}(key=value)'")
        if self.takes_arg and arg is None:
            raise ConfigError(f"head '{self.name}' needs an argument, e.g. '{self.name}:NAME'")
        return self.factory(arg, **params) if self.takes_arg else self.factory(**params)

    def documented_params(self) -> dict[str, Any]:
        """``params`` when given, else the factory's keyword defaults (a head class's ``__init__``)."""
        if self.params or self.takes_arg:
            return dict(self.params)
        import inspect

        try:
            signature = inspect.signature(self.factory)
        except (TypeError, ValueError):
            return {}
        return {name: p.default for name, p in signature.parameters.items()
                if p.default is not inspect.Parameter.empty}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "params": self.documented_params(),
                "takes_arg": self.takes_arg, "aliases": list(self.aliases)}


@dataclass(frozen=True)
class HeadRef:
    """A parsed head reference."""

    name: str
    arg: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        text = self.name + (f":{self.arg}" if self.arg else "")
        if self.params:
            text += "(" + ", ".join(f"{k}={v!r}" for k, v in self.params.items()) + ")"
        return text


def parse_head_ref(text: str) -> HeadRef:
    """Parse ``NAME[:ARG][(k=v, ...)]`` safely; raise :class:`ConfigError` on anything else."""
    match = _REF.match(text)
    if not match:
        raise ConfigError(f"cannot parse head reference {text!r}",
                          hint="write NAME, NAME(key=value, ...) or NAME:ARG(key=value, ...)")
    params: dict[str, Any] = {}
    if match.group("params") and match.group("params").strip():
        try:
            call = ast.parse(f"f({match.group('params')})", mode="eval").body
        except SyntaxError as exc:
            raise ConfigError(f"cannot parse the parameters of head {text!r}: {exc.msg}") from None
        if not isinstance(call, ast.Call) or call.args:
            raise ConfigError(f"head {text!r}: parameters must be given as key=value")
        for kw in call.keywords:
            if kw.arg is None:
                raise ConfigError(f"head {text!r}: '**' is not allowed in parameters")
            try:
                params[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise ConfigError(
                    f"head {text!r}: the value of '{kw.arg}' is not a literal",
                    hint="use numbers, strings, True/False/None, tuples, lists or dicts",
                ) from None
    return HeadRef(match.group("name"), match.group("arg"), params)
