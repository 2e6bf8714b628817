"""Every hook a headstart plugin can implement.

A plugin is a module (or object) named by an entry point in group ``headstart``;
its functions are marked with :data:`engine.hookimpl`. Each hook receives
``register`` (a callable that adds one item to the catalog) and ``engine`` (the
running :class:`headstart.engine.plugins.Engine`, for settings and other plugins). A hookimpl
may accept only the arguments it needs, but must not give them defaults:
pluggy silently passes nothing to an argument with a default (pluggy#522), so
the plugin manager rejects such hookimpls at load time.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "headstart"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backbones(register: Callable[..., None], engine: Any) -> None:
    """Add backbones: call ``register(spec, aliases=())`` with an
    :class:`headstart.engine.backbones.spec.BackboneSpec` for each one."""


@hookspec
def register_heads(register: Callable[..., None], engine: Any) -> None:
    """Add heads: call ``register(spec)`` with an :class:`headstart.engine.heads.spec.HeadSpec`.

    A head is a scikit-learn style classifier trained on cached feature vectors."""


@hookspec
def register_readers(register: Callable[..., None], engine: Any) -> None:
    """Add source readers: call ``register(spec)`` with an
    :class:`headstart.engine.embed.items.ReaderSpec` (chosen by path prefix, extension or a
    ``can_read`` check)."""


@hookspec
def register_finetuners(register: Callable[..., None], engine: Any) -> None:
    """Add full fine-tuning implementations: call ``register(spec)`` with an
    :class:`headstart.engine.train.finetune_spec.FinetunerSpec`."""


@hookspec
def register_commands(cli: Any, engine: Any) -> None:
    """Add CLI subcommands: ``cli`` is the root :class:`click.Group`; call
    ``cli.add_command(...)``. Keep imports inside the command bodies."""


@hookspec(firstresult=True)
def resolve_backbone(ref: str, engine: Any) -> Any:
    """Build a :class:`~headstart.engine.backbones.spec.BackboneSpec` on demand for a reference
    that is not a registered name (``hf:<id or folder>``, ``onnx:<path>``, ...).

    Return ``None`` when the reference is not yours; the first non-``None`` wins."""
