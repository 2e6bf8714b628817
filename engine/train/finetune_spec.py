"""What a finetuner plugin registers (hook ``register_finetuners``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class FinetunerSpec:
    """``run(request)`` trains backbone + head end to end and returns a result mapping.

    ``starts_from_fitted_head``: True when ``run`` starts from the frozen-feature head fitted on the
    training split (``request.head``, fitted before it runs); False when it only needs the head's
    parameters (an unfitted head is passed: it fits its own head at the end) and reports the frozen
    baseline itself in ``outcome.info["frozen_metrics"]`` (or not: then the engine fits the frozen head
    afterwards to report it).
    """

    name: str
    run: Callable[..., Any] = field(compare=False, repr=False)
    description: str = ""
    aliases: tuple[str, ...] = ()
    starts_from_fitted_head: bool = True

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}
