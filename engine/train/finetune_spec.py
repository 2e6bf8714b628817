"""What a finetuner plugin registers (hook ``register_finetuners``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class FinetunerSpec:
    """``run(request)`` trains backbone + head end to end and returns a result mapping."""

    name: str
    run: Callable[..., Any] = field(compare=False, repr=False)
    description: str = ""
    aliases: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}
