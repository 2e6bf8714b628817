"""Turn a head reference (``linear``, ``mlp(hidden=(256,))``, ``sklearn:SVC(C=2)``) into an estimator."""

from __future__ import annotations

from typing import Any

from .spec import HeadRef, HeadSpec, parse_head_ref


def head_spec(ref: str | HeadRef, engine: Any = None) -> tuple[HeadSpec, HeadRef]:
    """The registered :class:`HeadSpec` for ``ref`` (built-in or third-party) and the parsed ref."""
    from ..plugins import get_engine

    parsed = parse_head_ref(ref) if isinstance(ref, str) else ref
    entry = (engine or get_engine()).catalog.get("head", parsed.name)
    return entry.spec, parsed


def build_head(ref: str | HeadRef, engine: Any = None) -> tuple[Any, HeadRef]:
    """An unfitted estimator for ``ref``; the returned ref carries the canonical head name."""
    spec, parsed = head_spec(ref, engine)
    canonical = HeadRef(spec.name, parsed.arg, dict(parsed.params))
    from ..errors import ConfigError
    from .params import validate_head

    documented = ", ".join(spec.documented_params()) or "see `headstart heads --show " + spec.name + "`"
    try:
        estimator = spec.build(parsed.arg, **parsed.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"head '{canonical}' cannot be built: {exc}".replace("\n", " "),
                          hint=f"parameters: {documented}") from None
    return validate_head(estimator, str(canonical)), canonical
