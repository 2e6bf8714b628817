"""Built-in finetuner ``contrastive`` (``--objective contrastive``): few-shot fine-tuning of the body on pairs.

SetFit's recipe (pull same-class embeddings together, push other classes apart, then fit the head
on the tuned embeddings), made cheap on a CPU:

* every labelled item trains (training and validation split alike: with 8 items per class an
  80/20 hold-out is 1-2 items per class); the number of epochs is chosen by 2-fold
  cross-validation instead: per fold the top blocks train on the other fold and the held-out
  items are scored against the class centroids after every epoch; the epoch with the best mean
  held-out accuracy (ties: lower log-loss) is the one the final run on all items stops at. Two
  folds hold every item out once per epoch, as more folds would, at a third of four folds' cost
  (4 folds train on 3n items per epoch, 2 folds on n; at 8 per class the chosen epochs and the
  accuracy were the same within the seeds' spread, docs/finetune.md); the held-out score at
  epoch 0 (the frozen body) is the baseline reported as the frozen metrics;
* only the top ``--unfreeze last:N`` blocks train; the frozen blocks below run once and their
  output is replayed (block_cache.py), so a step costs the top blocks only;
* each step's loss covers every pair of the batch (pair_loss.py), hard pairs up-weighted, instead of
  sampling a few pairs per item;
* on a CPU with native bf16 dot products (AVX512-BF16, AMX) the top blocks' training steps and the held-out
  scoring run under bf16 autocast (``--precision auto``, the default; ``fp32`` / ``bf16`` force it): about
  twice the matrix-product speed there (emulated, slower, elsewhere). The weights, optimiser, loss, cached
  lower blocks and the embeddings the head is fitted on stay fp32, and the export is fp32;
* the tuned top blocks are written and their export started (``request.start_export``: the engine
  exports and parity-checks on a thread, against the trained module itself), then the head (linear or
  mlp, as asked; the engine passes it unfitted, no frozen head is fitted first) is fitted on the tuned
  embeddings of all items meanwhile.

A checkpoint is written after every fold (curves and RNG only: each fold restarts from the base
weights) and every epoch of the final run but its last (weights, optimiser moments, RNG; written on a
thread while the next epoch trains; the last epoch's weights become the tuned backbone at once, and a
run killed before its model folder is written repeats that epoch, bit for bit); ``resume`` continues
from it: finished folds are not re-run, the final run's state is restored. The tuned backbone's graph
is the base export with the tuned weights patched in (graph_patch.py) when every changed weight can be
placed; when cross-validation keeps the frozen body (0 epochs), the base backbone itself is returned and
nothing new is exported.
The history holds the cross-validated curve (epoch 0 = the frozen body), ``info["cv_metrics"]`` the
held-out accuracy / macro-F1 at the chosen epoch, which the engine reports as the validation score (and
then does not embed the source again), ``info["frozen_metrics"]`` those at epoch 0, the frozen baseline.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.sdk import ConfigError, FinetuneError, FinetunerSpec, hookimpl, pause_point, write_bytes_atomic

from .block_cache import FrozenPrefix
from .blocks import block_key, block_label, group_blocks
from .checkpoint import FILE as CHECKPOINT_FILE
from .checkpoint import BackgroundWriter, checkpoint_bytes, load_checkpoint, read_meta
from .finetuned import write_finetuned
from .graph_patch import PLANS, plan_for
from .pair_loss import centroid_scores, pair_cosine_loss

if TYPE_CHECKING:  # pragma: no cover
    from headstart.sdk import FinetuneOutcome, FinetuneRequest

MAX_FOLDS = 2  # see the module docstring: every item is held out once per epoch either way
WIDE_PER_CLASS = 16  # from this many items in the smallest class on: the wide schedule (see schedule())
WIDE_BLOCK_FACTOR = 1.5  # the wide schedule trains this many times --unfreeze's top blocks (rounded up)
HARDNESS = 1.0
DEFAULT_LR = 2e-4  # top block; the blocks below get layer_decay times the one above


@hookimpl
def register_finetuners(register):
    register(FinetunerSpec(name="contrastive", run=run, description="few-shot contrastive fine-tuning (all-pairs "
                           "cosine loss, top blocks on cached lower-block outputs, epochs chosen by k-fold CV, "
                           "resumable)", starts_from_fitted_head=False))


def schedule(smallest_class: int, unfreeze: str) -> tuple[str, str]:
    """(top blocks to train, how the k-fold curve chooses the epochs) for a labelled set whose smallest
    class has ``smallest_class`` items.

    Below ``WIDE_PER_CLASS`` items per class: ``--unfreeze``'s blocks; the epoch with the best held-out
    accuracy (``best``; ``--patience`` ends a fold early). From there on: 1.5 times ``--unfreeze``'s blocks
    (rounded up; more items, more to learn, and time to do it in), every fold runs all ``--epochs`` and the
    most-trained epoch whose held-out accuracy is within one standard error of the best is chosen
    (``longest-within-se``): the fine-tune's gain there (a few points) is below the resolution of the
    pooled held-out accuracy, whose argmax did not track the test accuracy, while the test accuracy rose
    with the epochs on average (docs/finetune.md); a clear drop still stops it.
    """
    if smallest_class < WIDE_PER_CLASS:
        return unfreeze, "best"
    from headstart.sdk import unfreeze_blocks

    count = unfreeze_blocks(unfreeze)
    return ("all" if count is None else f"last:{math.ceil(count * WIDE_BLOCK_FACTOR)}"), "longest-within-se"


class _Body:
    """The backbone with its frozen prefix cached: embeddings of any rows of the labelled items."""

    def __init__(self, request: "FinetuneRequest", items: list[Any], unfreeze: str | None = None) -> None:
        import torch

        from headstart.sdk import make_preprocessor, trainable_module, unfreeze_blocks

        self.module = trainable_module(request.spec)
        pre = make_preprocessor(request.spec)
        prepared = pre.prepare_many(items)
        for row, p in enumerate(prepared):
            if isinstance(p, Exception):
                raise FinetuneError(f"labelled item {row} could not be prepared: {p}",
                                    hint="the source changed since it was embedded; run again")
        self.inputs = {k: torch.from_numpy(v) for k, v in pre.collate(prepared).items()}
        self.autocast: Any = None  # bf16 (set by run()): the top blocks' matrix products in bf16
        self.mask = self.inputs.get("attention_mask") if request.spec.modality == "text" else None
        blocks = group_blocks([n for n, _ in self.module.named_parameters()])
        count = unfreeze_blocks(unfreeze or request.options.unfreeze)  # default: the asked blocks
        first = 0 if count is None else max(0, len(blocks) - count)
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
        self.initial = {n: self.params[n].detach().clone() for b in self.blocks for n in b}
        # what a checkpoint holds: the trainable parameters only (the frozen ones are the base backbone's)
        self.trainable = torch.nn.ParameterDict({n.replace(".", "__"): self.params[n] for n in self.initial})

    def reset(self) -> None:
        import torch

        with torch.no_grad():
            for name, value in self.initial.items():
                self.params[name].copy_(value)

    def groups(self, lr: float, layer_decay: float, weight_decay: float) -> list[dict[str, Any]]:
        groups = []
        for depth, block in enumerate(reversed(self.blocks)):
            named = [(n, self.params[n]) for n in block]
            for decay, params in ((weight_decay, [p for n, p in named if p.ndim > 1]),
                                  (0.0, [p for n, p in named if p.ndim <= 1])):
                if params:
                    groups.append({"params": params, "lr": lr * layer_decay ** depth, "weight_decay": decay})
        return groups

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


def native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16 matrix products
    run about twice as fast as fp32's (measured: a 640x384 @ 384x1536 product, 1 thread, 7.9 ms fp32, 3.5 ms
    bf16 on an AVX512-BF16 EPYC); elsewhere they are emulated and slower."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume none
        return False


def _train_precision(asked: str) -> str:
    """fp32 or bf16: ``auto`` is bf16 where the CPU has native bf16 dot products."""
    if asked == "auto":
        return "bf16" if native_bf16() else "fp32"
    return asked


def _adamw(groups: list[dict[str, Any]]) -> Any:
    """AdamW with the fused CPU kernel (several times faster per step than the per-tensor loop on a few
    million parameters; the same update rule), without torch.optim's import of torch._dynamo (adamw.py)."""
    from .adamw import FusedAdamW

    return FusedAdamW(groups)


def _train_epoch(body: _Body, optimizer: Any, y: Any, rows: np.ndarray, batch_size: int, seed: int) -> float:
    """One pass over ``rows`` in shuffled batches; each batch's loss covers all its pairs."""
    import torch

    body.module.train()
    order = np.random.default_rng(seed).permutation(rows)
    steps = max(1, round(len(order) / batch_size))
    losses = []
    for batch in np.array_split(order, steps):
        optimizer.zero_grad(set_to_none=True)
        loss = pair_cosine_loss(body.embed(batch), y[torch.from_numpy(batch)], HARDNESS)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from headstart.sdk import stratified_folds

    k = min(MAX_FOLDS, int(np.bincount(y).min()))
    return stratified_folds(y, k, seed) if k >= 2 else []


def _choose_epoch(curves: list[list[dict[str, Any]]], y: np.ndarray, folds: list,
                  classes: np.ndarray, rule: str = "best") -> tuple[int, list, dict, dict]:
    """The epoch with the best mean held-out accuracy (ties: lower loss; rule ``longest-within-se``: the
    last epoch within one standard error of that accuracy, see schedule()), the mean curve, the pooled
    held-out metrics there and at epoch 0 (the frozen body: the baseline the fine-tune is compared with)."""
    from headstart.sdk import classification_metrics

    length = max(len(c) for c in curves)
    padded = [c + [c[-1]] * (length - len(c)) for c in curves]
    mean = [{"epoch": e, "val_accuracy": round(float(np.mean([c[e]["acc"] for c in padded])), 6),
             "val_loss": round(float(np.mean([c[e]["loss"] for c in padded])), 6)} for e in range(length)]
    best = max(range(length), key=lambda e: (mean[e]["val_accuracy"], -mean[e]["val_loss"], -e))
    if rule == "longest-within-se":
        top = mean[best]["val_accuracy"]
        se = float(np.sqrt(max(top * (1 - top), 1.0 / len(y)) / len(y)))  # binomial, over the pooled held-out items
        best = max(e for e in range(length) if mean[e]["val_accuracy"] >= top - se - 1e-9)
    classes = np.asarray(classes)

    def pooled(epoch: int) -> dict[str, Any]:
        pred = np.empty(len(y), np.int64)
        for (_, held), curve in zip(folds, padded):
            pred[held] = curve[epoch]["pred"]
        return classification_metrics(classes[y], classes[pred], classes)

    return best, mean, pooled(best), pooled(0)


def _graph_patch(spec: Any, body: _Body, state: dict[str, Any], tuned: dict[str, Any],
                 cache: Any) -> dict[str, Any] | None:
    """Where the tuned top blocks go in the base export's graph (graph_patch.py), or None: trace it."""
    arrays = {n: v.detach().cpu().numpy() for n, v in tuned.items()}
    base = {**{n: v.detach().cpu().numpy() for n, v in state.items()},
            **{n: v.cpu().numpy() for n, v in body.initial.items()}}
    return plan_for(spec, base, arrays, cache=cache)


def run(request: "FinetuneRequest") -> "FinetuneOutcome":
    """Choose the epochs by k-fold CV, train the top blocks on every item, fit the head, write the backbone."""
    import torch

    from headstart.sdk import FinetuneOutcome

    opts = request.options
    if opts.device == "cuda" or opts.precision == "fp16":
        raise ConfigError("the contrastive objective runs on the CPU, in fp32 or bf16 (it trains the top blocks "
                          "of a few dozen items)", hint="use --device cpu (or auto) and --precision auto, fp32 or bf16")
    torch.manual_seed(opts.seed)
    items = list(request.train_items) + list(request.val_items)
    y_np = np.concatenate([np.asarray(request.train_y, np.int64), np.asarray(request.val_y, np.int64)])
    y = torch.from_numpy(y_np)
    n_classes = len(request.classes)
    started = time.perf_counter()
    unfreeze, rule = schedule(int(np.bincount(y_np).min()), opts.unfreeze)
    body = _Body(request, items, unfreeze)
    cache_seconds = time.perf_counter() - started
    lr = opts.lr if opts.lr is not None else DEFAULT_LR
    optimizer = _adamw(body.groups(lr, opts.layer_decay, opts.weight_decay))
    folds = _folds(y_np, opts.seed)
    checkpoint = request.checkpoint_dir
    meta = read_meta(checkpoint) if request.resume else None
    resumed_from = None
    state: dict[str, Any] = {"phase": "cv", "curves": [], "epoch": 0, "history": [], "optimizer_steps": 0,
                             "best_epoch": 0, "best": None, "frozen": None, "stale": 0, "target_epochs": None,
                             "precision": None}

    def weights(phase: str) -> Any:  # during the k-fold phase the weights are reset per fold: not saved
        return body.trainable if phase == "final" else torch.nn.ParameterDict()

    if meta is not None:
        if meta.get("identity") != json.loads(json.dumps(request.identity)) or meta.get("objective") != "contrastive":
            raise FinetuneError(f"the checkpoint in {checkpoint} belongs to another run (other data, backbone, head, "
                                "objective or options)", hint="resume with the same options, or delete the folder")
        meta, _ = load_checkpoint(checkpoint, model=weights(meta["phase"]), optimizer=optimizer, scaler=None,
                                  device="cpu")
        state = {k: meta.get(k, v) for k, v in state.items()}
        resumed_from = {"phase": state["phase"], "folds_done": len(state["curves"]), "epoch": state["epoch"],
                        "optimizer_steps": state["optimizer_steps"], "best_epoch": state["best_epoch"]}
        request.log(f"resumed from the checkpoint after {len(state['curves'])} folds, final-run epoch {state['epoch']}")
    checkpoint.mkdir(parents=True, exist_ok=True)
    # decided once per run: a resumed run keeps its precision (auto could decide otherwise on another machine)
    state["precision"] = state["precision"] or _train_precision(opts.precision)
    body.autocast = torch.bfloat16 if state["precision"] == "bf16" else None

    def snapshot() -> bytes:
        return checkpoint_bytes(model=weights(state["phase"]), best={}, optimizer=optimizer, scaler=None,
                                state={**state, "identity": request.identity, "objective": "contrastive"})

    def save() -> None:
        write_bytes_atomic(checkpoint / CHECKPOINT_FILE, snapshot())

    epochs_run = 0
    # 1. k-fold: how many epochs generalise (each fold trains from the base weights on the other folds)
    for fold in range(len(state["curves"]), len(folds) if state["phase"] == "cv" else 0):
        train_rows, held = folds[fold]
        body.reset()
        fold_opt = _adamw(body.groups(lr, opts.layer_decay, opts.weight_decay))

        def score() -> dict[str, Any]:
            emb = body.embed_all(np.concatenate([train_rows, held]))
            acc, loss, pred = centroid_scores(emb[:len(train_rows)], y_np[train_rows], emb[len(train_rows):],
                                              y_np[held], n_classes)
            return {"acc": acc, "loss": loss, "pred": pred.tolist()}

        curve = [score()]
        best, stale = (curve[0]["acc"], -curve[0]["loss"]), 0
        for epoch in range(1, opts.epochs + 1):
            _train_epoch(body, fold_opt, y, train_rows, opts.batch_size, opts.seed * 1_000_003 + fold * 1009 + epoch)
            epochs_run += 1
            curve.append(score())
            if (curve[-1]["acc"], -curve[-1]["loss"]) > best:
                best, stale = (curve[-1]["acc"], -curve[-1]["loss"]), 0
            else:
                stale += 1
                if rule == "best" and stale >= opts.patience:
                    break
        state["curves"].append(curve)
        request.log(f"fold {fold + 1}/{len(folds)}: held-out accuracy by epoch "
                    + " ".join(f"{c['acc']:.3f}" for c in curve))
        save()
        pause_point("finetune-fold-end", fold=fold + 1)
    if state["phase"] == "cv":
        if folds:
            target, state["history"], state["best"], state["frozen"] = _choose_epoch(
                state["curves"], y_np, folds, request.classes, rule)
        else:  # a class with one item: no held-out signal, train the asked epochs
            target = opts.epochs
            state["history"] = [{"epoch": 0}]
        state.update(phase="final", target_epochs=target, best_epoch=target)
        body.reset()
        held_out = f" (held-out accuracy {state['best']['accuracy']:.4f})" if state["best"] else ""
        request.log(f"cross-validation chose {target} epochs ({rule}){held_out}")
    # 2. the final run on every item, for the chosen number of epochs
    all_rows = np.arange(len(items))
    # each epoch's checkpoint is written while the next epoch trains; its pause point follows once it is durable
    # (not the last epoch's: its weights are written as the tuned backbone next, ~0.1 s of serialising saved)
    writer, written = BackgroundWriter(checkpoint / CHECKPOINT_FILE), None

    def durable() -> None:
        writer.wait()
        if written is not None:
            pause_point("finetune-epoch-end", epoch=written)

    while state["epoch"] < state["target_epochs"]:
        epoch = state["epoch"] + 1
        tick = time.perf_counter()
        loss = _train_epoch(body, optimizer, y, all_rows, opts.batch_size, opts.seed * 1_000_003 + 999_983 + epoch)
        epochs_run += 1
        state["optimizer_steps"] += max(1, round(len(all_rows) / opts.batch_size))
        state["epoch"] = epoch
        row = next((h for h in state["history"] if h.get("epoch") == epoch), None)
        if row is not None:
            row["train_loss"] = round(loss, 6)
            row["seconds"] = round(time.perf_counter() - tick, 3)
        durable()
        written = None
        if epoch < state["target_epochs"]:
            writer.submit(snapshot())
            written = epoch
        request.log(f"epoch {epoch}/{state['target_epochs']} on all {len(items)} items: pair loss {loss:.4f}")
    durable()
    # 3. the tuned backbone is written and its export (parity gate) started, then the head is fitted meanwhile
    emb = body.embed_all(all_rows, exact=True)  # what the fp32 export computes: the head is fitted on it
    body.prefix.restore()
    if state["target_epochs"] == 0:  # no epoch beat the frozen body: it is kept (its cached export, no new one)
        ref, files = request.spec.name, []
    else:  # only the trained tensors are written (a delta over the base backbone's weights)
        tuned = {n: body.params[n] for n in body.initial}
        patch = _graph_patch(request.spec, body, body.module.state_dict(), tuned, request.finetuned_root / PLANS)
        ref, files = write_finetuned(request.finetuned_root, request.spec.name, tuned,
                                     {"head": request.head_name, "objective": "contrastive",
                                      "best_epoch": state["best_epoch"],
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "graph_patch": patch}, delta=True)
        request.start_export(ref, reference=body.module.eval())  # the trained module: the parity reference
    head = type(request.head)(**copy.deepcopy(request.head.get_params(deep=False)))  # sklearn's clone
    head.fit(emb, np.asarray(request.classes)[y_np])
    info = {"device": "cpu", "precision": state["precision"], "objective": "contrastive",
            "trainable_blocks": body.trainable_names,
            "schedule": {"unfreeze": unfreeze, "epoch_rule": rule},
            "trainable_parameters": int(sum(v.numel() for v in body.initial.values())),
            "optimizer_steps": state["optimizer_steps"], "folds": len(folds), "items": len(items),
            "cached_split": body.prefix.active, "cache_seconds": round(cache_seconds, 3),
            "base_body_kept": state["target_epochs"] == 0,
            "seconds": round(time.perf_counter() - started, 3)}
    if state["best"]:
        info["cv_metrics"] = state["best"]
        if state["frozen"]:
            info["frozen_metrics"] = {**state["frozen"], "split": "cross-validation (frozen body, class centroids)"}
    return FinetuneOutcome(head=head, backbone_ref=ref, history=state["history"], best_epoch=state["best_epoch"],
                           resumed_from=resumed_from, epochs_run=epochs_run,
                           stopped_early=bool(folds) and state["target_epochs"] < opts.epochs, info=info,
                           backbone_files=files)
