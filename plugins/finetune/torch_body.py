"""The contrastive finetuner's body on the backbone's PyTorch module (any backbone with ``build_torch``).

The module's plain twin where it has one (``headstart.sdk.trainable_module``); only the top
``--unfreeze`` blocks train, the frozen blocks below run once and their output is replayed
(block_cache.py). Dropout draws from torch's global RNG, seeded once per run and kept in the checkpoints.
On a CPU with native bf16 dot products the top blocks' steps and the held-out scoring can run under bf16
autocast (:attr:`TorchBody.autocast`); the weights, optimiser, loss, cached blocks and the embeddings the head
is fitted on stay fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .block_cache import FrozenPrefix
from .blocks import block_key, block_label, group_blocks
from .checkpoint import checkpoint_bytes, load_checkpoint
from .items import collated_items
from .pair_loss import pair_cosine_loss

if TYPE_CHECKING:  # pragma: no cover
    from headstart.sdk import FinetuneRequest


class TorchBody:
    """The backbone with its frozen prefix cached: embeddings of any rows of the labelled items."""

    engine = "torch"

    def __init__(self, request: "FinetuneRequest", items: list[Any], unfreeze: str, seed: int) -> None:
        import torch

        from headstart.sdk import first_trained_block, trainable_module

        torch.manual_seed(seed)
        self.module = trainable_module(request.spec)
        self.inputs = {k: torch.from_numpy(v) for k, v in collated_items(request.spec, items).items()}
        self.autocast: Any = None  # bf16 (set_precision): the top blocks' matrix products in bf16
        self.mask = self.inputs.get("attention_mask") if request.spec.modality == "text" else None
        blocks = group_blocks([n for n, _ in self.module.named_parameters()])
        first = first_trained_block(unfreeze, len(blocks))
        self.trainable_names = [block_label(b) for b in blocks[first:]]
        self.params = dict(self.module.named_parameters())
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.blocks = blocks[first:]
        for block in self.blocks:
            for name in block:
                self.params[name].requires_grad_(True)
        keys = [next((k for k in map(block_key, reversed(b)) if k is not None), None) for b in blocks]
        self.prefix = FrozenPrefix(self.module, keys, first)
        self.prefix.cache(self.inputs, lambda chunk: self.module(**chunk))
        self.cached_split = self.prefix.active
        self.initial = {n: self.params[n].detach().clone() for b in self.blocks for n in b}
        self.trainable_parameters = int(sum(v.numel() for v in self.initial.values()))
        # what a checkpoint holds: the trainable parameters only (the frozen ones are the base backbone's)
        self.trainable = torch.nn.ParameterDict({n.replace(".", "__"): self.params[n] for n in self.initial})

    def set_precision(self, precision: str) -> None:
        import torch

        self.autocast = torch.bfloat16 if precision == "bf16" else None

    def reset(self) -> None:
        import torch

        with torch.no_grad():
            for name, value in self.initial.items():
                self.params[name].copy_(value)

    def optimizer(self, lr: float, layer_decay: float, weight_decay: float) -> Any:
        """AdamW with the fused CPU kernel (several times faster per step than the per-tensor loop on a few
        million parameters; the same update rule), without torch.optim's import of torch._dynamo (adamw.py)."""
        from .adamw import FusedAdamW

        groups = []
        for depth, block in enumerate(reversed(self.blocks)):
            named = [(n, self.params[n]) for n in block]
            for decay, params in ((weight_decay, [p for n, p in named if p.ndim > 1]),
                                  (0.0, [p for n, p in named if p.ndim <= 1])):
                if params:
                    groups.append({"params": params, "lr": lr * layer_decay ** depth, "weight_decay": decay})
        return FusedAdamW(groups)

    def step(self, optimizer: Any, rows: np.ndarray, y: np.ndarray, hardness: float, seed: int) -> float:
        """One optimiser step on the pair loss of ``rows`` (dropout from torch's RNG: ``seed`` is not used)."""
        import torch

        self.module.train()
        optimizer.zero_grad(set_to_none=True)
        loss = pair_cosine_loss(self.embed(rows), torch.from_numpy(y), hardness)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def embed(self, rows: np.ndarray, exact: bool = False) -> Any:
        """fp32 embeddings of ``rows`` (the top blocks under autocast unless ``exact``)."""
        import torch

        rows = np.asarray(rows)
        width = None
        if self.mask is not None:
            width = int(self.mask[rows].sum(1).max())
        batch = {k: (v[rows] if width is None else v[rows][:, :width]) for k, v in self.inputs.items()}
        self.prefix.select(rows, width)
        if self.autocast is None or exact:
            return self.module(**batch)
        with torch.autocast("cpu", dtype=self.autocast):
            return self.module(**batch).float()

    def embed_all(self, rows: np.ndarray, chunk: int = 128, exact: bool = False) -> np.ndarray:
        import torch

        self.module.eval()
        with torch.inference_mode():
            out = [self.embed(rows[s:s + chunk], exact).float().numpy() for s in range(0, len(rows), chunk)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def checkpoint(self, optimizer: Any, state: dict[str, Any], weights: bool) -> bytes:
        """The checkpoint's bytes: the state, the optimiser, RNG and (``weights``) the trainable weights."""
        import torch

        return checkpoint_bytes(model=self.trainable if weights else torch.nn.ParameterDict(), best={},
                                optimizer=optimizer, scaler=None, state=state)

    def restore(self, folder: Path, optimizer: Any, weights: bool) -> dict[str, Any]:
        import torch

        meta, _ = load_checkpoint(folder, model=self.trainable if weights else torch.nn.ParameterDict(),
                                  optimizer=optimizer, scaler=None, device="cpu")
        return meta

    def finish(self) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray], Any]:
        """(tuned tensors to write, base weights and tuned weights as arrays for the graph patch, the trained
        module as the export's parity reference); the module is complete again (its prefix restored)."""
        self.prefix.restore()
        tuned = {n: self.params[n] for n in self.initial}
        arrays = {n: v.detach().cpu().numpy() for n, v in tuned.items()}
        base = {**{n: v.detach().cpu().numpy() for n, v in self.module.state_dict().items()},
                **{n: v.cpu().numpy() for n, v in self.initial.items()}}
        return tuned, base, arrays, self.module.eval()


def native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16 matrix products
    run about twice as fast as fp32's (measured: a 640x384 @ 384x1536 product, 1 thread, 7.9 ms fp32, 3.5 ms
    bf16 on an AVX512-BF16 EPYC); elsewhere they are emulated and slower."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume none
        return False
