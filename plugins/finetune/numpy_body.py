"""The contrastive finetuner's body on the backbone's numpy twin (``headstart.sdk.numpy_twin``): no torch at all.

The same recipe as the PyTorch body (torch_body.py): the top ``--unfreeze`` blocks train, the frozen blocks
below run once (:meth:`NumpyBody.__init__` keeps their output) and each step runs only the top blocks, on the
pair loss (pair_loss.py), with AdamW's rule (adamw.py). The gradients are the twin's own backward pass.
Dropout is drawn from a generator seeded by the run's seed, the fold, the epoch and the step, so a resumed
run repeats an uninterrupted one exactly without storing RNG state. It trains in fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.sdk import FinetuneError

from .adamw import ArrayAdamW
from .blocks import block_label, group_blocks
from .checkpoint import array_checkpoint_chunks, load_array_checkpoint
from .items import collated_items
from .pair_loss import pair_cosine_loss_np

if TYPE_CHECKING:  # pragma: no cover
    from headstart.sdk import FinetuneRequest

#: items per chunk when the frozen blocks run (attention's memory grows with chunk x length^2)
PREFIX_CHUNK = 32
#: glibc's mallopt parameters: serve allocations below 256 MB from the heap, and keep up to 512 MB of freed
#: heap instead of returning it to the system
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, HEAP_BYTES, KEPT_BYTES = -1, -3, 256 << 20, 512 << 20


def reuse_freed_memory() -> bool:
    """Make glibc reuse freed memory for numpy's temporaries instead of mapping fresh pages for each one.

    A training step allocates dozens of arrays of a few MB; by default glibc maps each from the system and
    unmaps it when freed, so every one page-faults anew: element-wise operations on them ran at half speed
    (measured: a 300x1536 float32 exp 1.39 -> 0.75 ms, a multiply 0.125 -> 0.069 ms). Process-wide, for
    allocations made from now on; False where the C library is not glibc (nothing changes)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))
    except (OSError, AttributeError):
        return False


class NumpyBody:
    """The numpy twin with its frozen prefix cached: embeddings of any rows of the labelled items."""

    engine = "numpy"

    def __init__(self, request: "FinetuneRequest", items: list[Any], unfreeze: str, model: Any) -> None:
        from headstart.sdk import first_trained_block

        reuse_freed_memory()
        self.model = model
        self.inputs = collated_items(request.spec, items)
        self.mask = self.inputs["attention_mask"]
        blocks = group_blocks(list(model.params))
        self.first = first_trained_block(unfreeze, len(blocks))
        self.blocks = blocks[self.first:]
        self.trainable_names = [block_label(b) for b in self.blocks]
        self.cached_split = self.first > 0
        self.states = None
        if self.cached_split:
            n = len(self.mask)
            width = self.mask.shape[1]
            self.states = np.zeros((n, width, model.hidden), np.float32)
            for s in range(0, n, PREFIX_CHUNK):
                chunk = {k: v[s:s + PREFIX_CHUNK] for k, v in self.inputs.items()}
                w = int(chunk["attention_mask"].sum(1).max())
                self.states[s:s + PREFIX_CHUNK, :w] = model.prefix({k: v[:, :w] for k, v in chunk.items()}, self.first)
        # what trains: every parameter of the top blocks that gets a gradient (not the unused pooler)
        trained = {n for b in range(self.first, model.layers + 1) for n in model.block_names(b)}
        self.initial = {n: model.params[n].copy() for b in self.blocks for n in b if n in trained}
        self.trainable_parameters = int(sum(v.size for v in self.initial.values()))

    def set_precision(self, precision: str) -> None:
        if precision != "fp32":
            raise FinetuneError(f"the numpy body trains in fp32, not {precision}",
                                hint="delete the checkpoint folder to start over")

    def reset(self) -> None:
        for name, value in self.initial.items():
            self.model.params[name][...] = value

    def fork(self) -> "NumpyBody":
        """A body that shares this one's inputs, cached prefix and frozen weights but trains its own copy of the
        trainable ones (from the base weights): the cross-validation folds train side by side on threads."""
        twin = copy.copy(self)
        twin.model = copy.copy(self.model)
        twin.model.params = {**self.model.params, **{n: v.copy() for n, v in self.initial.items()}}
        return twin

    def optimizer(self, lr: float, layer_decay: float, weight_decay: float) -> ArrayAdamW:
        """AdamW groups as the PyTorch body makes them (per block from the top, decayed matrices, undecayed
        vectors; the same parameter indices in a checkpoint)."""
        groups = []
        for depth, block in enumerate(reversed(self.blocks)):
            for decay, names in ((weight_decay, [n for n in block if self.model.params[n].ndim > 1]),
                                 (0.0, [n for n in block if self.model.params[n].ndim <= 1])):
                if names:
                    groups.append({"params": names, "lr": lr * layer_decay ** depth, "weight_decay": decay})
        return ArrayAdamW(groups, self.model.params)

    def _batch(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        rows = np.asarray(rows)
        width = int(self.mask[rows].sum(1).max())
        batch = {k: v[rows][:, :width] for k, v in self.inputs.items()}
        return batch, (self.states[rows][:, :width] if self.states is not None else None)

    def step(self, optimizer: ArrayAdamW, rows: np.ndarray, y: np.ndarray, hardness: float, seed: int) -> float:
        """One optimiser step on the pair loss of ``rows``; dropout drawn from ``seed``."""
        batch, states = self._batch(rows)
        emb, tape = self.model.forward(batch, self.first, states, rng=np.random.default_rng(seed), record=True)
        loss, grad = pair_cosine_loss_np(emb, y, hardness)
        grads = self.model.backward(tape, grad)
        optimizer.step({n: g for n, g in grads.items() if n in self.initial})
        return loss

    def embed_all(self, rows: np.ndarray, chunk: int = 128, exact: bool = False) -> np.ndarray:
        out = []
        for s in range(0, len(rows), chunk):
            batch, states = self._batch(rows[s:s + chunk])
            out.append(self.model.forward(batch, self.first, states)[0])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _keys(self) -> dict[str, str]:
        return {n: n.replace(".", "__") for n in self.initial}  # the PyTorch body's checkpoint keys

    def checkpoint(self, optimizer: ArrayAdamW, state: dict[str, Any], weights: bool) -> list[Any]:
        """The checkpoint file's chunks (a snapshot): the state, the optimiser and (``weights``) the trainable
        weights."""
        kept = {key: self.model.params[n] for n, key in self._keys().items()} if weights else {}
        return array_checkpoint_chunks(weights=kept, optimizer_state=optimizer.state_dict(), state=state)

    def restore(self, folder: Path, optimizer: ArrayAdamW, weights: bool) -> dict[str, Any]:
        meta, saved, optimizer_state = load_array_checkpoint(folder)
        if weights:
            keys = self._keys()
            if set(saved) != set(keys.values()):
                raise FinetuneError(f"the checkpoint in {folder} holds other weights than this run trains",
                                    hint="resume with the same options, or delete the folder")
            for name, key in keys.items():
                self.model.params[name][...] = saved[key]
        optimizer.load_state_dict(optimizer_state)
        return meta

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], Any]:
        """(tuned arrays to write, base and tuned weights for the graph patch, the trained twin as the export's
        parity reference)."""
        tuned = {n: self.model.params[n].copy() for n in self.initial}
        base = {**self.model.params, **self.initial}
        return tuned, base, tuned, self.model
