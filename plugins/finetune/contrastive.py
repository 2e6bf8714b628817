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
* only the blocks ``--unfreeze`` names train (default ``auto``: the top 2, 3 or every block above the stem,
  by the size and class count of the labelled set, see schedule()); the frozen blocks below run once and
  their output is replayed, so a step costs the trained blocks only;
* each step's loss covers every pair of the batch (pair_loss.py), hard pairs up-weighted, instead of
  sampling a few pairs per item;
* the body that trains: where the backbone has a numpy twin (BERT text encoders: ``headstart.sdk.numpy_twin``)
  and the run is fp32 (``--precision auto``, the default, or ``fp32``), the numpy body (numpy_body.py): no
  torch import at all (1-2.5 s of a few-second run) and numpy's matrix products are as fast as torch's on
  these sizes; else the PyTorch body (torch_body.py), where on a CPU with native bf16 dot products
  (AVX512-BF16, AMX) ``auto`` (or ``bf16``) runs the top blocks' steps and the held-out scoring under bf16
  autocast, about twice the matrix-product speed there. The weights, optimiser, loss, cached lower blocks
  and the embeddings the head is fitted on stay fp32, and the export is fp32;
* the tuned top blocks are written and their export started (``request.start_export``: the engine
  exports and parity-checks on a thread, against the trained body itself), then the head (linear or
  mlp, as asked; the engine passes it unfitted, no frozen head is fitted first) is fitted on the tuned
  embeddings of all items meanwhile.

A checkpoint is written after every fold (curves and RNG only: each fold restarts from the base
weights) and every epoch of the final run but its last (weights, optimiser moments, RNG; the numpy body
draws its dropout from seeds of the run's seed, fold, epoch and step instead, and stores none; written on a
thread while the next epoch trains; the last epoch's weights become the tuned backbone at once, and a
run killed before its model folder is written repeats that epoch, bit for bit); ``resume`` continues
from it: finished folds are not re-run, the final run's state is restored, with the body and precision the
run started with (another machine could decide ``auto`` otherwise). The tuned backbone's graph
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
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from headstart.sdk import ConfigError, FinetuneError, FinetunerSpec, hookimpl, pause_point, write_bytes_atomic

from .checkpoint import FILE as CHECKPOINT_FILE
from .checkpoint import BackgroundWriter, read_meta
from .finetuned import write_finetuned
from .graph_patch import PLANS, plan_for
from .pair_loss import centroid_scores

if TYPE_CHECKING:  # pragma: no cover
    from headstart.sdk import FinetuneOutcome, FinetuneRequest

MAX_FOLDS = 2  # see the module docstring: every item is held out once per epoch either way
LONG_RULE_PER_CLASS = 16  # from this many items in the smallest class on: the longest-within-se epoch rule
DEEP_MIN_ITEMS = 32  # --unfreeze auto below LONG_RULE_PER_CLASS per class: every block above the stem from here on
DEEP_MIN_CLASSES = 3  # --unfreeze auto from LONG_RULE_PER_CLASS per class: every block above the stem from here on
AUTO_BLOCKS = {"short": "last:2", "deep": "all-but-stem", "long": "last:3"}  # --unfreeze auto, by schedule()
HARDNESS = 1.0
DEFAULT_LR = 2e-4  # top block; the blocks below get layer_decay times the one above


@hookimpl
def register_finetuners(register):
    register(FinetunerSpec(name="contrastive", run=run, description="few-shot contrastive fine-tuning (all-pairs "
                           "cosine loss, top blocks on cached lower-block outputs, epochs chosen by k-fold CV, "
                           "resumable)", starts_from_fitted_head=False))


def schedule(class_sizes: Sequence[int], unfreeze: str) -> tuple[str, str]:
    """(the blocks that train, how the k-fold curve chooses the epochs) for a labelled set with
    ``class_sizes`` items per class; docs/finetune.md has the measurements behind each choice.

    Epochs: below ``LONG_RULE_PER_CLASS`` items per class the epoch with the best held-out accuracy (``best``;
    ``--patience`` ends a fold early). From there on every fold runs all ``--epochs`` and the most-trained
    epoch whose held-out accuracy is within one standard error of the best is chosen (``longest-within-se``):
    the fine-tune's gain there (a few points) is below the resolution of the pooled held-out accuracy, whose
    argmax did not track the test accuracy, while the test accuracy rose with the epochs on average; a clear
    drop still stops it.

    Blocks: ``--unfreeze`` as given, except ``auto`` (the default):

    * ``best`` rule, fewer than ``DEEP_MIN_ITEMS`` items (a binary set of 8 per class): the top 2 blocks. The
      whole run is a few seconds, and SetFit's is short on so few pairs: deeper steps would cost more than
      they returned on the sets measured;
    * ``best`` rule, ``DEEP_MIN_ITEMS`` items or more (several classes of a few items): every block above the
      stem (``all-but-stem``: a text encoder's layers, not its token embeddings). Where the classes differ in
      form rather than topic (TREC's question types: *who* / *how many* / *where*) the top blocks alone cannot
      learn it (6 classes x 8, 5 seeds: top 2 blocks 0.686, every layer 0.800); on topic sets it did as well
      as the top 2 (debian6 0.761 vs 0.758), and the folds stop at their best epoch, so the run stays short;
    * ``longest-within-se``, ``DEEP_MIN_CLASSES`` classes or more: every block above the stem, as for small
      multi-class sets (TREC 6 x 32: the top 3 blocks 0.868 on the 2 seeds measured, every layer 0.906 on those
      and 0.894 on 5; 6 x 16: 0.846 vs 0.867; the topic set debian6 kept within a point: 0.799 vs 0.791 at 16 per
      class, 0.820 vs 0.821 at 32);
    * ``longest-within-se``, two classes: the top 3 blocks. Every fold runs every epoch there, and every layer cost
      two to four times as much for mixed results (16 per class: debian-net-web -4.4 points, rt-polarity +0.7).
    """
    from headstart.sdk import UNFREEZE_AUTO

    rule = "best" if min(class_sizes) < LONG_RULE_PER_CLASS else "longest-within-se"
    if unfreeze != UNFREEZE_AUTO:
        return unfreeze, rule
    if rule == "longest-within-se":
        return AUTO_BLOCKS["deep" if len(class_sizes) >= DEEP_MIN_CLASSES else "long"], rule
    return AUTO_BLOCKS["deep" if sum(class_sizes) >= DEEP_MIN_ITEMS else "short"], rule


def _train_precision(asked: str) -> str:
    """fp32 or bf16 for the PyTorch body: ``auto`` is bf16 where the CPU has native bf16 dot products."""
    if asked == "auto":
        from .torch_body import native_bf16

        return "bf16" if native_bf16() else "fp32"
    return asked


def _make_body(request: "FinetuneRequest", items: list[Any], unfreeze: str, recorded: dict[str, Any] | None) -> Any:
    """The numpy body where the backbone has a numpy twin and the run trains in fp32 (``auto`` or ``fp32``: no
    torch import, and numpy's matrix products are as fast on these sizes), else the PyTorch body. A resumed
    run keeps the body its checkpoint recorded (checkpoints before the numpy body: PyTorch)."""
    from headstart.sdk import numpy_twin

    opts = request.options
    engine = (recorded.get("engine") or "torch") if recorded is not None else None
    model = None
    if engine in (None, "numpy") and opts.precision in ("auto", "fp32"):
        model = numpy_twin(request.spec)
    if engine == "numpy" and model is None:
        raise FinetuneError("the checkpoint was written by the numpy body, which this backbone or --precision "
                            "does not offer now", hint="resume with the same options, or delete the folder")
    if model is not None:
        from .numpy_body import NumpyBody

        return NumpyBody(request, items, unfreeze, model)
    from .torch_body import TorchBody

    return TorchBody(request, items, unfreeze, opts.seed)


def _train_epoch(body: Any, optimizer: Any, y: np.ndarray, rows: np.ndarray, batch_size: int, seed: int) -> float:
    """One pass over ``rows`` in shuffled batches; each batch's loss covers all its pairs."""
    order = np.random.default_rng(seed).permutation(rows)
    steps = max(1, round(len(order) / batch_size))
    losses = [body.step(optimizer, batch, y[batch], HARDNESS, seed * 1009 + i)
              for i, batch in enumerate(np.array_split(order, steps))]
    return float(np.mean(losses))


def _each_fold(body: Any, folds: range, train_fold: Any) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """``train_fold(body, fold)`` of each fold, in order. A body that can ``fork`` (the numpy body) trains the
    folds side by side, one Python thread and one BLAS thread each (numpy releases the GIL in its kernels):
    on 2 cores the two folds of a few-shot run took ~20-35% less time than one after the other on two BLAS
    threads, which gain little on matrices this small. Always so, also for a single fold left on resume:
    the same thread counts give the same rounding as an uninterrupted run. Else the folds run in turn."""
    if not hasattr(body, "fork"):
        for fold in folds:
            yield train_fold(body, fold)
        return
    import os
    from concurrent.futures import ThreadPoolExecutor

    from headstart.sdk import one_blas_thread

    workers = max(1, min(len(folds), os.cpu_count() or 1))
    with one_blas_thread(), ThreadPoolExecutor(workers, thread_name_prefix="headstart-fold") as pool:
        futures = [pool.submit(train_fold, body.fork(), fold) for fold in folds]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


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


def run(request: "FinetuneRequest") -> "FinetuneOutcome":
    """Choose the epochs by k-fold CV, train the top blocks on every item, fit the head, write the backbone."""
    from headstart.sdk import FinetuneOutcome

    opts = request.options
    if opts.device == "cuda" or opts.precision == "fp16":
        raise ConfigError("the contrastive objective runs on the CPU, in fp32 or bf16 (it trains the top blocks "
                          "of a few dozen items)", hint="use --device cpu (or auto) and --precision auto, fp32 or bf16")
    items = list(request.train_items) + list(request.val_items)
    y_np = np.concatenate([np.asarray(request.train_y, np.int64), np.asarray(request.val_y, np.int64)])
    n_classes = len(request.classes)
    checkpoint = request.checkpoint_dir
    meta = read_meta(checkpoint) if request.resume else None
    if meta is not None and (meta.get("identity") != json.loads(json.dumps(request.identity))
                             or meta.get("objective") != "contrastive"):
        raise FinetuneError(f"the checkpoint in {checkpoint} belongs to another run (other data, backbone, head, "
                            "objective or options)", hint="resume with the same options, or delete the folder")
    started = time.perf_counter()
    unfreeze, rule = schedule(np.bincount(y_np).tolist(), opts.unfreeze)
    body = _make_body(request, items, unfreeze, meta)
    cache_seconds = time.perf_counter() - started
    lr = opts.lr if opts.lr is not None else DEFAULT_LR
    optimizer = body.optimizer(lr, opts.layer_decay, opts.weight_decay)
    folds = _folds(y_np, opts.seed)
    resumed_from = None
    state: dict[str, Any] = {"phase": "cv", "curves": [], "epoch": 0, "history": [], "optimizer_steps": 0,
                             "best_epoch": 0, "best": None, "frozen": None, "stale": 0, "target_epochs": None,
                             "precision": None, "engine": body.engine}
    if meta is not None:
        # during the k-fold phase the weights are reset per fold: a checkpoint holds them in the final run only
        meta = body.restore(checkpoint, optimizer, weights=meta["phase"] == "final")
        state = {k: meta.get(k, v) for k, v in state.items()}
        resumed_from = {"phase": state["phase"], "folds_done": len(state["curves"]), "epoch": state["epoch"],
                        "optimizer_steps": state["optimizer_steps"], "best_epoch": state["best_epoch"]}
        request.log(f"resumed from the checkpoint after {len(state['curves'])} folds, final-run epoch {state['epoch']}")
    checkpoint.mkdir(parents=True, exist_ok=True)
    # decided once per run: a resumed run keeps its precision (auto could decide otherwise on another machine)
    state["precision"] = state["precision"] or ("fp32" if body.engine == "numpy" else _train_precision(opts.precision))
    body.set_precision(state["precision"])

    def snapshot() -> bytes | list[Any]:
        return body.checkpoint(optimizer, {**state, "identity": request.identity, "objective": "contrastive"},
                               weights=state["phase"] == "final")

    def save() -> None:
        write_bytes_atomic(checkpoint / CHECKPOINT_FILE, snapshot())

    def train_fold(fold_body: Any, fold: int) -> tuple[list[dict[str, Any]], int]:
        """One fold from the base weights: its held-out curve (epoch 0 = the frozen body) and epochs run."""
        train_rows, held = folds[fold]
        fold_body.reset()
        fold_opt = fold_body.optimizer(lr, opts.layer_decay, opts.weight_decay)

        def score() -> dict[str, Any]:
            emb = fold_body.embed_all(np.concatenate([train_rows, held]))
            acc, loss, pred = centroid_scores(emb[:len(train_rows)], y_np[train_rows], emb[len(train_rows):],
                                              y_np[held], n_classes)
            return {"acc": acc, "loss": loss, "pred": pred.tolist()}

        curve = [score()]
        best, stale = (curve[0]["acc"], -curve[0]["loss"]), 0
        for epoch in range(1, opts.epochs + 1):
            _train_epoch(fold_body, fold_opt, y_np, train_rows, opts.batch_size,
                         opts.seed * 1_000_003 + fold * 1009 + epoch)
            curve.append(score())
            if (curve[-1]["acc"], -curve[-1]["loss"]) > best:
                best, stale = (curve[-1]["acc"], -curve[-1]["loss"]), 0
            else:
                stale += 1
                if rule == "best" and stale >= opts.patience:
                    break
        return curve, len(curve) - 1

    epochs_run = 0
    # 1. k-fold: how many epochs generalise (each fold trains from the base weights on the other folds)
    remaining = range(len(state["curves"]), len(folds) if state["phase"] == "cv" else 0)
    for fold, (curve, ran) in zip(remaining, _each_fold(body, remaining, train_fold)):
        epochs_run += ran
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
        loss = _train_epoch(body, optimizer, y_np, all_rows, opts.batch_size,
                            opts.seed * 1_000_003 + 999_983 + epoch)
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
    tuned, base, tuned_arrays, reference = body.finish()
    if state["target_epochs"] == 0:  # no epoch beat the frozen body: it is kept (its cached export, no new one)
        ref, files = request.spec.name, []
    else:  # only the trained tensors are written (a delta over the base backbone's weights)
        patch = plan_for(request.spec, base, tuned_arrays, cache=request.finetuned_root / PLANS)
        ref, files = write_finetuned(request.finetuned_root, request.spec.name, tuned,
                                     {"head": request.head_name, "objective": "contrastive",
                                      "best_epoch": state["best_epoch"],
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "graph_patch": patch}, delta=True)
        request.start_export(ref, reference=reference)  # the trained model: the parity reference
    head = type(request.head)(**copy.deepcopy(request.head.get_params(deep=False)))  # sklearn's clone
    head.fit(emb, np.asarray(request.classes)[y_np])
    info = {"device": "cpu", "precision": state["precision"], "engine": body.engine, "objective": "contrastive",
            "trainable_blocks": body.trainable_names,
            "schedule": {"unfreeze": unfreeze, "epoch_rule": rule},
            "trainable_parameters": body.trainable_parameters,
            "optimizer_steps": state["optimizer_steps"], "folds": len(folds), "items": len(items),
            "cached_split": body.cached_split, "cache_seconds": round(cache_seconds, 3),
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
