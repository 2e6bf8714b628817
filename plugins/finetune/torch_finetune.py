"""Built-in finetuner ``torch``: backbone + head trained end to end in PyTorch (torch is imported only in functions).

The backbone is the spec's own PyTorch module (the weights the export uses: pooling and
normalisation included); the head starts from the fitted frozen-feature head (linear ->
``nn.Linear`` from ``coef_``/``intercept_``; mlp -> a copy of its network). Training: AdamW with
discriminative learning rates (``lr`` for the top block, ``layer_decay`` per block below, ``head_lr``
for the head; no weight decay on biases and norms), batches reshuffled per epoch from ``seed``,
validation after every epoch (and once before the first), early stopping on the validation
metric (ties: lower loss) keeping the best epoch, mixed precision (bf16 / fp16 with a grad
scaler) on CUDA. A checkpoint is written atomically after every epoch; ``resume`` restores
weights, optimiser moments, step counts, RNG state, best epoch and history from it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from typing import TYPE_CHECKING

from headstart.sdk import ConfigError, FinetuneError, FinetunerSpec, hookimpl, pause_point

from .blocks import block_label, group_blocks
from .checkpoint import load_checkpoint, read_meta, save_checkpoint
from .finetuned import PREFIX, finetuned_spec, write_finetuned

if TYPE_CHECKING:  # pragma: no cover
    from headstart.sdk import FinetuneOutcome, FinetuneRequest

IMAGE_CACHE_BYTES = 1 << 30  # prepared images are kept in memory up to this size, else decoded per batch


@hookimpl
def register_finetuners(register):
    register(FinetunerSpec(name="torch", run=run, description="PyTorch end-to-end fine-tuning (AdamW, "
                           "discriminative LRs, early stopping, mixed precision on CUDA, resumable)"))


@hookimpl
def resolve_backbone(ref, engine):
    return finetuned_spec(ref, engine) if isinstance(ref, str) and ref.startswith(PREFIX) else None


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU", hint="use --device cpu or auto")
    return name


def _amp_dtype(precision: str, device: str) -> Any:
    import torch

    if precision in ("fp32", "auto"):  # auto: fp32 (mixed precision is asked for, not guessed)
        return None
    if device != "cuda":
        raise ConfigError(f"--precision {precision} is mixed precision on CUDA; this run is on {device}",
                          hint="use --precision fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _head_module(head: Any) -> Any:
    """A torch module computing the fitted head's logits."""
    import copy

    import torch

    net = getattr(head, "net_", None)
    if isinstance(net, torch.nn.Module):
        return copy.deepcopy(net).float()
    if hasattr(head, "coef_") and hasattr(head, "intercept_"):
        coef = np.asarray(head.coef_, np.float32)
        linear = torch.nn.Linear(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(coef))
            linear.bias.copy_(torch.from_numpy(np.asarray(head.intercept_, np.float32)))
        return linear
    raise FinetuneError(f"cannot fine-tune a {type(head).__name__} head", hint="use --head linear or --head mlp")


def _store_head(head: Any, module: Any) -> Any:
    """Write the trained weights back into the head object (saved by its own persistence)."""
    if hasattr(head, "net_"):
        head.net_ = module.cpu().eval()
    else:
        head.coef_ = module.weight.detach().cpu().numpy().astype(np.float32)
        head.intercept_ = module.bias.detach().cpu().numpy().astype(np.float32)
    return head


class _Data:
    """Prepared items, collated into batches on demand (text and numeric prepared once)."""

    def __init__(self, pre: Any, items: list[Any], modality: str, what: str) -> None:
        self.pre, self.items, self.what = pre, items, what
        size = getattr(pre.prep, "size", 0)
        keep = modality != "image" or len(items) * 3 * size * size * 4 <= IMAGE_CACHE_BYTES
        self.prepared = self._prepare(range(len(items))) if keep else None

    def _prepare(self, rows: Any) -> list[Any]:
        rows = list(rows)
        out = self.pre.prepare_many([self.items[i] for i in rows])
        for row, p in zip(rows, out):
            if isinstance(p, Exception):
                raise FinetuneError(f"{self.what} item {row} could not be prepared: {p}",
                                    hint="the source changed since it was embedded; run again")
        return out

    def batch(self, rows: Any, device: str) -> dict[str, Any]:
        import torch

        prepared = [self.prepared[i] for i in rows] if self.prepared is not None else self._prepare(rows)
        return {k: torch.from_numpy(v).to(device) for k, v in self.pre.collate(prepared).items()}


def _param_groups(backbone: Any, head: Any, used: set[str], request: "FinetuneRequest") -> tuple[list[dict], list[str]]:
    """AdamW groups (top block first) and the names of the trainable blocks; freezes the rest."""
    from headstart.sdk import first_trained_block

    opts = request.options
    lr, head_lr = opts.resolved_lr(request.spec.modality)
    blocks = group_blocks([n for n, _ in backbone.named_parameters() if n in used])
    trainable = blocks[first_trained_block(opts.unfreeze, len(blocks)):]
    params = dict(backbone.named_parameters())
    for p in backbone.parameters():
        p.requires_grad_(False)
    groups: list[dict] = []

    def add(named: list[tuple[str, Any]], rate: float, label: str) -> None:
        decay = [p for n, p in named if p.ndim > 1]
        plain = [p for n, p in named if p.ndim <= 1]
        for p in decay + plain:
            p.requires_grad_(True)
        groups.extend(g for g in ({"params": decay, "lr": rate, "weight_decay": opts.weight_decay, "name": label},
                                  {"params": plain, "lr": rate, "weight_decay": 0.0, "name": label + " (no decay)"})
                      if g["params"])

    add(list(head.named_parameters()), head_lr, "head")
    for depth, block in enumerate(reversed(trainable)):
        add([(n, params[n]) for n in block], lr * opts.layer_decay ** depth, f"backbone block -{depth}")
    names = [block_label(block) for block in trainable]
    return groups, names


def run(request: "FinetuneRequest") -> "FinetuneOutcome":
    """Train, checkpoint every epoch, keep the best epoch, write the fine-tuned backbone."""
    import torch

    from headstart.sdk import make_preprocessor
    from headstart.sdk import build_module
    from headstart.sdk import FinetuneOutcome

    opts = request.options
    device = _device(opts.device)
    amp = _amp_dtype(opts.precision, device)
    torch.manual_seed(opts.seed)
    backbone = build_module(request.spec).to(device)
    for p in backbone.parameters():
        p.requires_grad_(True)
    head = _head_module(request.head).to(device)
    net = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    pre = make_preprocessor(request.spec)
    train = _Data(pre, request.train_items, request.spec.modality, "training")
    val = _Data(pre, request.val_items, request.spec.modality, "validation")
    y_train = torch.from_numpy(np.asarray(request.train_y, np.int64)).to(device)
    y_val = np.asarray(request.val_y, np.int64)
    loss_fn = torch.nn.CrossEntropyLoss()

    def forward(inputs: dict[str, Any]) -> Any:
        with torch.autocast(device_type=device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            return net["head"](net["backbone"](**inputs)).float()

    # one forward/backward pass finds the parameters that matter (an unused pooler gets no gradient)
    net.train()
    first = np.arange(min(opts.batch_size, len(request.train_items)))
    loss_fn(forward(train.batch(first, device)), y_train[first]).backward()
    used = {n for n, p in backbone.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    groups, trainable = _param_groups(backbone, head, used, request)
    optimizer = torch.optim.AdamW(groups)
    scaler = torch.amp.GradScaler("cuda", enabled=opts.precision == "fp16")
    # Frozen parts stay in eval mode while training: BatchNorm statistics and stochastic depth
    # (EfficientNet's drop-connect reads `self.training`) must not change what frozen blocks compute.
    frozen_parts = [m for m in backbone.modules()
                    if any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]

    def evaluate() -> dict[str, float]:
        from headstart.sdk import classification_metrics

        net.eval()
        logits = []
        with torch.inference_mode():
            for start in range(0, len(y_val), opts.batch_size * 2):
                rows = np.arange(start, min(start + opts.batch_size * 2, len(y_val)))
                logits.append(forward(val.batch(rows, device)).cpu())
        z = torch.cat(logits)
        loss = float(loss_fn(z, torch.from_numpy(y_val)))
        m = classification_metrics(y_val.astype(str), z.argmax(1).numpy().astype(str), np.arange(len(request.classes)).astype(str))
        return {"val_loss": round(loss, 6), "val_accuracy": round(m["accuracy"], 6), "val_macro_f1": round(m["macro_f1"], 6)}

    def snapshot() -> dict[str, Any]:
        return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}

    key = f"val_{opts.metric}"
    meta = read_meta(request.checkpoint_dir) if request.resume else None
    resumed_from = None
    if meta is not None:
        if meta["identity"] != json.loads(json.dumps(request.identity)):
            raise FinetuneError(f"the checkpoint in {request.checkpoint_dir} belongs to another run (other data, "
                                "backbone, head or options)", hint="resume with the same options, or delete the folder")
        meta, best = load_checkpoint(request.checkpoint_dir, model=net, optimizer=optimizer, scaler=scaler, device=device)
        state = {k: meta[k] for k in ("epoch", "best_epoch", "best", "stale", "history", "optimizer_steps")}
        resumed_from = {"epoch": state["epoch"], "optimizer_steps": state["optimizer_steps"],
                        "best_epoch": state["best_epoch"]}
        request.log(f"resumed from the checkpoint of epoch {state['epoch']} ({state['optimizer_steps']} optimiser steps)")
    else:
        first_eval = evaluate()
        state = {"epoch": 0, "best_epoch": 0, "best": [first_eval[key], -first_eval["val_loss"]], "stale": 0,
                 "history": [{"epoch": 0, **first_eval}], "optimizer_steps": 0}
        best = snapshot()
        request.log(f"epoch 0 (frozen head, before fine-tuning): {key} {first_eval[key]:.4f}")
    request.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    gen_seed, n = opts.seed, len(request.train_items)
    items_seen, train_seconds, epochs_run = 0, 0.0, 0
    while state["epoch"] < opts.epochs and state["stale"] < opts.patience:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        net.train()
        for m in frozen_parts:
            m.eval()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(gen_seed * 100_003 + epoch)).numpy()
        losses = []
        for start in range(0, n, opts.batch_size):
            rows = order[start:start + opts.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(train.batch(rows, device)), y_train[torch.from_numpy(rows).to(device)])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            state["optimizer_steps"] += 1
        seconds = time.perf_counter() - started
        items_seen, train_seconds, epochs_run = items_seen + n, train_seconds + seconds, epochs_run + 1
        scores = evaluate()
        state["history"].append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 6), **scores,
                                 "seconds": round(seconds, 3)})
        score = [scores[key], -scores["val_loss"]]
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch, stale=0)
            best = snapshot()
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        save_checkpoint(request.checkpoint_dir, model=net, best=best, optimizer=optimizer, scaler=scaler,
                        state={**state, "identity": request.identity})
        pause_point("finetune-epoch-end", epoch=epoch)
        request.log(f"epoch {epoch}/{opts.epochs}: train loss {state['history'][-1]['train_loss']:.4f}  "
                    f"{key} {scores[key]:.4f}  val loss {scores['val_loss']:.4f}  ({seconds:.1f}s)")
    net.load_state_dict(best)
    ref, files = write_finetuned(request.finetuned_root, request.spec.name, net["backbone"].state_dict(),
                                 {"head": request.head_name, "best_epoch": state["best_epoch"],
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    info = {"device": device, "precision": "fp32" if amp is None else opts.precision, "trainable_blocks": trainable,
            "trainable_parameters": int(sum(p.numel() for g in groups for p in g["params"])),
            "optimizer_steps": state["optimizer_steps"],
            "train_items_per_second": round(items_seen / train_seconds, 1) if train_seconds else None}
    return FinetuneOutcome(head=_store_head(request.head, net["head"]), backbone_ref=ref, history=state["history"],
                           best_epoch=state["best_epoch"], resumed_from=resumed_from, epochs_run=epochs_run,
                           stopped_early=state["stale"] >= opts.patience and state["epoch"] < opts.epochs,
                           info=info, backbone_files=files)
