"""Run the frozen lower blocks of a backbone once and replay their output while the top blocks train.

``FrozenPrefix(module, trainable_keys)`` finds the numbered block just below the lowest trainable
one (``model.encoder.layer.3`` when the top two of six train), computes its output for every item
once (:meth:`cache`), and swaps the frozen numbered blocks in their ``ModuleList`` for stand-ins: the
one at the split returns the cached output of the batch's rows, the ones below return their input
unchanged (their result is never used). Each training step then runs the stem (an embedding
lookup) and the trainable blocks only. :meth:`restore` puts the original blocks back, so the
module's ``state_dict`` is complete again. Padding is exact: items are collated together once and
the cached states of padded positions are never read by unpadded ones (attention masks them).
When the split is not a numbered block in a ``ModuleList`` (or the stem trains), nothing is cached
and the full module runs (``active`` is False).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

CACHE_CHUNK = 64


def _locate(module: Any, key: str) -> tuple[Any, int] | None:
    """(parent container, index) of the block ``a.b.3``, when the parent is a ModuleList/Sequential."""
    import torch

    parent_name, _, index = key.rpartition(".")
    if not index.isdigit():
        return None
    try:
        parent = module.get_submodule(parent_name)
    except AttributeError:
        return None
    if not isinstance(parent, (torch.nn.ModuleList, torch.nn.Sequential)) or int(index) >= len(parent):
        return None
    return parent, int(index)


def _make_standins(template: Any) -> tuple[Any, Any]:
    """(replay module, pass-through module) returning outputs shaped like the original block's."""
    import torch

    def shape(tensor: Any) -> Any:
        return (tensor,) if isinstance(template, tuple) else tensor

    class Replay(torch.nn.Module):
        current: Any = None

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return shape(self.current)

    class PassThrough(torch.nn.Module):
        def forward(self, hidden: Any, *args: Any, **kwargs: Any) -> Any:
            return shape(hidden)

    return Replay(), PassThrough


class FrozenPrefix:
    """Split-point cache of one module for one set of collated inputs."""

    def __init__(self, module: Any, block_keys: list[str], first_trainable: int) -> None:
        """``block_keys``: the numbered keys of the module's blocks bottom to top; blocks from
        ``first_trainable`` on train. Index 0 may be the stem (no numbered key): then nothing is cached."""
        self.module, self.active = module, False
        self.frozen: list[tuple[Any, int, Any]] = []
        if first_trainable < 1 or first_trainable > len(block_keys):
            return
        keys = block_keys[:first_trainable]
        places = [_locate(module, k) for k in keys if k is not None]
        if not places or any(p is None for p in places) or len({id(p[0]) for p in places}) != 1:
            return
        self.places = places
        self.active = True

    def cache(self, inputs: dict[str, Any], run: Callable[[dict[str, Any]], Any]) -> None:
        """Run ``run(inputs_chunk)`` (the full module) over ``inputs`` and keep the split block's output."""
        import torch

        if not self.active:
            return
        parent, index = self.places[-1]
        captured: list[Any] = []
        template: list[Any] = []

        def hook(_module: Any, _args: Any, output: Any) -> None:
            template[:] = [output]
            captured.append((output[0] if isinstance(output, tuple) else output).detach())

        handle = parent[index].register_forward_hook(hook)
        try:
            n = next(iter(inputs.values())).shape[0]
            with torch.inference_mode():
                for start in range(0, n, CACHE_CHUNK):
                    run({k: v[start:start + CACHE_CHUNK] for k, v in inputs.items()})
        finally:
            handle.remove()
        self.states = torch.cat(captured).clone()
        self.replay, passthrough = _make_standins(template[0])
        self.originals = [(parent, i, parent[i]) for parent, i in self.places]
        for parent, i, _ in self.originals[:-1]:
            parent[i] = passthrough()
        parent[index] = self.replay

    def select(self, rows: np.ndarray, width: int | None = None) -> None:
        """Make the replay block return the cached states of ``rows`` (trimmed to ``width`` positions)."""
        if self.active:
            states = self.states[rows]
            self.replay.current = states if width is None else states[:, :width]

    def restore(self) -> None:
        """Put the original blocks back (a complete module and ``state_dict`` again)."""
        if self.active and hasattr(self, "originals"):
            for parent, i, block in self.originals:
                parent[i] = block
            del self.originals
