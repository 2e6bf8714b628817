"""Backbone blocks for ``--unfreeze last:N`` and discriminative learning rates, found from parameter names.

A block is the prefix of a parameter name up to its first numeric part (``model.encoder.layer.3``,
``net._blocks.12``, ``body.0``). Parameters before the first numbered block form the stem (the
lowest block); parameters after the last one (final norms, projection) join the top block.
Parameters that get no gradient in the forward pass (an unused pooler or classifier) are left
out. Blocks are ordered bottom to top, in the module's registration order.
"""

from __future__ import annotations

from typing import Iterable


def block_key(name: str) -> str | None:
    """``a.b.3.c.weight`` -> ``a.b.3``; ``None`` when no part is numeric."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


def group_blocks(names: Iterable[str]) -> list[list[str]]:
    """Parameter names grouped into blocks, bottom (stem) to top."""
    names = list(names)
    keys = [block_key(n) for n in names]
    numbered = [i for i, k in enumerate(keys) if k is not None]
    if not numbered:
        return [names] if names else []
    first, last = numbered[0], numbered[-1]
    blocks: list[list[str]] = []
    if first > 0:
        blocks.append(names[:first])
    current: str | None = None
    for i in range(first, len(names)):
        key = keys[i] if i <= last else current
        if key is None:  # an unnumbered parameter between numbered blocks joins the block before it
            key = current
        if key != current:
            blocks.append([])
            current = key
        blocks[-1].append(names[i])
    return blocks


def block_label(block: list[str]) -> str:
    """A short name for a block: its numbered key, else the common prefix of its parameters."""
    for name in reversed(block):
        if (key := block_key(name)) is not None:
            return key
    prefix = block[0].split(".")[:-1]
    for name in block[1:]:
        parts = name.split(".")
        while prefix and parts[: len(prefix)] != prefix:
            prefix = prefix[:-1]
    return ".".join(prefix) or "(root)"
