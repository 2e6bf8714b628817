"""Full fine-tuning, orchestrated: frozen baseline first, end-to-end training in a finetuner plugin,
then back onto the ONNX path (export cache, parity gate, feature store, standard model folder).

:func:`finetune` embeds the source with the base backbone (cache hits are free; a finetuner that fits its
own head, like ``contrastive``, gets text items read, not embedded: it never reads those vectors), splits it exactly
as :func:`headstart.engine.train.api.train` does, fits the frozen-feature head on the training split (the
starting point: linear probing, then fine-tuning), hands a :class:`FinetuneRequest` to the
finetuner (built-in: ``torch``), exports the fine-tuned backbone through the export cache (a new
fingerprint, parity-checked against the fine-tuned PyTorch model), embeds the source with it, and
writes the model folder. :func:`escalate` sweeps heads first and fine-tunes only when the best
head misses a target.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, FinetuneError, HeadError
from .api import DEFAULT_SWEEP, Prepared, prepare, sweep
from .metrics import classification_metrics
from ..heads.features import FeatureSet
from .model import Model, load_features, load_model, make_manifest

HEADS = ("linear", "mlp")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
METRICS = ("accuracy", "macro_f1")
# objective -> the built-in finetuner that trains it (``finetune(finetuner=...)`` can name another plugin)
OBJECTIVES = {"cross-entropy": "torch", "contrastive": "contrastive"}
# each objective's defaults where they differ from FinetuneOptions' (the CLI's unset options take these)
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {"contrastive": {"unfreeze": "auto", "epochs": 5, "batch_size": 16,
                                                                   "precision": "auto"}}
UNFREEZE_AUTO, UNFREEZE_ALL_BUT_STEM = "auto", "all-but-stem"  # --unfreeze spellings besides all and last:N
CHECKPOINT_DIR = "checkpoint"
BACKBONE_DIR = "backbone"
FINETUNED_DIR = "finetuned"  # <home>/finetuned/<sha16>/: fine-tuned weights, content-addressed


@dataclass(frozen=True)
class FinetuneOptions:
    """Every tunable of a fine-tuning run.

    ``unfreeze``: ``all``, ``all-but-stem`` (every block above the stem, e.g. a text encoder's layers but
    not its token embeddings) or ``last:N`` (the top N blocks of the backbone train, the rest stay
    frozen); the contrastive objective's default ``auto`` lets its schedule choose from the labelled set.
    ``lr``: learning rate of the top backbone block (default 5e-5 for text, 1e-4 otherwise); each block
    below gets ``layer_decay`` times the one above (discriminative LRs).
    ``head_lr``: the head's learning rate (default ``10 * lr``). Early stopping: training stops
    after ``patience`` epochs without a better validation ``metric``; the best epoch is kept.
    ``precision``: cross-entropy's bf16/fp16 are mixed precision and need CUDA (``auto``: fp32); the contrastive
    objective's bf16 is bf16 autocast of its training steps and held-out scoring on the CPU, ``auto`` (its
    default) picks it on a CPU with native bf16 dot products (AVX512-BF16 or AMX), else fp32; the exported
    backbone is fp32 either way. ``objective``: ``cross-entropy`` (backbone +
    head end to end) or ``contrastive`` (few labels: the body on pairs, epochs chosen by k-fold
    cross-validation on every labelled item, then the head; see docs/finetune.md).
    """

    unfreeze: str = "all"
    epochs: int = 5
    lr: float | None = None
    head_lr: float | None = None
    layer_decay: float = 0.8
    weight_decay: float = 0.01
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    patience: int = 2
    metric: str = "accuracy"
    val_fraction: float = 0.2
    seed: int = 0
    objective: str = "cross-entropy"

    def check(self) -> "FinetuneOptions":
        """Raise :class:`ConfigError` on an invalid value; return self."""
        if self.unfreeze == UNFREEZE_AUTO:
            if self.objective != "contrastive":
                raise ConfigError("--unfreeze auto is the contrastive objective's schedule",
                                  hint="use all, all-but-stem or last:N with the cross-entropy objective")
        elif self.unfreeze != UNFREEZE_ALL_BUT_STEM:
            unfreeze_blocks(self.unfreeze)
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError("epochs, batch_size and patience must be at least 1",
                              hint=f"got epochs={self.epochs}, batch_size={self.batch_size}, patience={self.patience}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown fine-tuning precision '{self.precision}'", hint=f"use one of {', '.join(PRECISIONS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device '{self.device}'", hint="use auto, cpu or cuda")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown fine-tuning objective '{self.objective}'",
                              hint=f"use one of {', '.join(OBJECTIVES)}")
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric '{self.metric}'", hint=f"use one of {', '.join(METRICS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("fine-tuning needs a validation split for early stopping",
                              hint=f"use 0 < val_fraction < 1, got {self.val_fraction}")
        if not 0.0 < self.layer_decay <= 1.0 or any(v is not None and v <= 0 for v in (self.lr, self.head_lr)):
            raise ConfigError("learning rates must be positive and layer_decay in (0, 1]")
        return self

    @classmethod
    def for_objective(cls, objective: str, **overrides: Any) -> "FinetuneOptions":
        """Options with ``objective``'s defaults (contrastive: blocks chosen by its schedule, up to 5 epochs,
        batches of 16), then ``overrides`` (``None`` values keep the default)."""
        defaults = OBJECTIVE_DEFAULTS.get(objective, {})
        return cls(objective=objective, **{**defaults, **{k: v for k, v in overrides.items() if v is not None}})

    def resolved_lr(self, modality: str) -> tuple[float, float]:
        """(backbone top-block lr, head lr)."""
        lr = self.lr if self.lr is not None else (5e-5 if modality == "text" else 1e-4)
        return lr, self.head_lr if self.head_lr is not None else 10 * lr


def unfreeze_blocks(text: str) -> int | None:
    """``all`` -> None; ``last:N`` -> N (>= 1). (``all-but-stem`` depends on the block count: see
    :func:`first_trained_block`.)"""
    if text == "all":
        return None
    name, _, count = text.partition(":")
    if name == "last" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ConfigError(f"cannot read --unfreeze '{text}'",
                      hint=f"use 'all', '{UNFREEZE_ALL_BUT_STEM}' or 'last:N' (N >= 1 top blocks)")


def first_trained_block(text: str, n_blocks: int) -> int:
    """The lowest block (0: the stem, blocks ordered bottom to top) of ``n_blocks`` that ``--unfreeze text``
    trains: ``all`` 0, ``all-but-stem`` 1 (0 when the stem is the only block), ``last:N`` ``n_blocks - N``."""
    if text == UNFREEZE_ALL_BUT_STEM:
        return 1 if n_blocks > 1 else 0
    count = unfreeze_blocks(text)
    return 0 if count is None else max(0, n_blocks - count)


@dataclass
class FinetuneRequest:
    """What a finetuner's ``run(request)`` gets.

    ``head`` is the fitted frozen-feature head (linear or mlp) to start from; the finetuner
    returns it with the fine-tuned weights. Items are raw payloads (texts, image bytes, arrays),
    ``*_y`` are indices into ``classes``. The finetuner checkpoints each epoch under
    ``checkpoint_dir`` (when ``resume`` is set and a checkpoint matching ``identity`` exists, it
    continues from it), writes the fine-tuned backbone under ``finetuned_root`` and returns a
    backbone reference that its ``resolve_backbone`` hook resolves to a spec with a new identity.
    """

    spec: Any  # the base BackboneSpec
    head: Any
    head_name: str
    classes: np.ndarray
    train_items: list[Any]
    train_y: np.ndarray
    val_items: list[Any]
    val_y: np.ndarray
    options: FinetuneOptions
    checkpoint_dir: Path
    finetuned_root: Path
    resume: bool
    identity: dict[str, Any]
    log: Callable[[str], None] = field(default=lambda message: None, repr=False)
    # call with the fine-tuned backbone's ref as soon as its weights are written: the engine starts exporting it
    # (graph, parity gate) on a thread while the finetuner finishes (e.g. fits its head); optional. ``reference``:
    # the tuned model still in memory (PyTorch in eval mode, or the backbone's numpy twin; no longer changed),
    # the parity gate's reference instead of one rebuilt from the written weights
    start_export: Callable[..., None] = field(default=lambda ref, reference=None: None, repr=False)


@dataclass
class FinetuneOutcome:
    """What a finetuner returns: the fine-tuned head, the backbone ref to resolve, the training record."""

    head: Any
    backbone_ref: str
    history: list[dict[str, Any]]
    best_epoch: int
    resumed_from: dict[str, Any] | None
    epochs_run: int
    stopped_early: bool
    info: dict[str, Any] = field(default_factory=dict)  # device, precision, throughput, unfrozen blocks, ...
    backbone_files: list[Path] = field(default_factory=list)  # copied into MODEL_DIR/backbone/ (portable copy)


@dataclass
class FinetuneResult:
    """The fine-tuned model, its validation metrics on the ONNX path, and the frozen baseline."""

    model: Model
    metrics: dict[str, Any]
    frozen_metrics: dict[str, Any]
    outcome: FinetuneOutcome
    export: dict[str, Any]
    path: Path

    def summary(self) -> dict[str, Any]:
        metric = self.model.manifest["finetune"]["options"]["metric"]
        return {"model": str(self.path), "backbone": self.model.backbone, "head": self.model.manifest["head"]["ref"],
                "metric": metric, "frozen": _scores(self.frozen_metrics), "finetuned": _scores(self.metrics),
                "improvement": round(self.metrics[metric] - self.frozen_metrics[metric], 6),
                "best_epoch": self.outcome.best_epoch, "epochs_run": self.outcome.epochs_run,
                "stopped_early": self.outcome.stopped_early, "resumed_from": self.outcome.resumed_from,
                "history": self.outcome.history, "export": self.export, "info": self.outcome.info}


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "n", "split") if k in metrics}


def _engine(engine: Any) -> Any:
    if engine is not None:
        return engine
    from ..plugins import get_engine

    return get_engine()


def _frozen_head(prep: Prepared, head: str, init_head: Any, engine: Any,
                 fit: bool = True) -> tuple[Any, str, dict[str, Any] | None]:
    """The fitted frozen-feature head to start from (given, or fitted on the training split) and its
    validation metrics; with ``fit`` False and no ``init_head``, the unfitted head (and no metrics)."""
    from ..heads.resolve import build_head

    if init_head is None:
        model, name = None, head
    else:
        model = init_head if isinstance(init_head, Model) else load_model(init_head, engine=engine)
        name = model.manifest["head"]["name"]
    if name.split("(")[0].strip() not in HEADS:
        raise ConfigError(f"fine-tuning trains a linear or mlp head, not '{name}'",
                          hint="use --head linear or --head mlp(hidden=(256,))")
    if model is None and not fit:
        unfitted, ref = build_head(head, engine)
        return unfitted, str(ref), None
    rows_train, rows_val = prep.split.train, prep.split.val
    if model is None:
        fitted, ref = build_head(head, engine)
        fitted.fit(prep.X[rows_train], prep.y[rows_train])
        name = str(ref)
    else:
        fitted = model.head
        expected = model.backbone.get("fingerprint")
        if expected != prep.features.fingerprint:
            raise FinetuneError(f"the starting head in {model.path} was trained on backbone fingerprint "
                                f"{str(expected)[:12]}, the source was embedded with {str(prep.features.fingerprint)[:12]}",
                                hint="pass the backbone that head was trained on (--backbone), or drop --init-head")
        if sorted(map(str, fitted.classes_)) != sorted(np.unique(prep.y).tolist()):
            raise FinetuneError(f"the starting head in {model.path} knows classes {list(fitted.classes_)}, the source has "
                                f"{np.unique(prep.y).tolist()}", hint="start from a head trained on the same labels")
        name = model.manifest["head"]["ref"]
    predicted = fitted.predict(prep.X[rows_val])
    metrics = classification_metrics(prep.y[rows_val], predicted, fitted.classes_)
    metrics["split"] = "validation"
    return fitted, name, metrics


def _payloads(source: Any, keys: Sequence[str], reader_options: Any, engine: Any) -> dict[str, Any]:
    """Raw payload of each wanted content key, read again through the same reader."""
    import dataclasses

    from ..embed.items import ReaderOptions
    from ..embed.sources import open_source

    wanted = set(keys)
    options = dataclasses.replace(reader_options or ReaderOptions(), labelled=True)
    found: dict[str, Any] = {}
    for item in open_source(str(source), options, engine=engine):
        if item.key in wanted and item.payload is not None:
            found.setdefault(item.key, item.payload)
    missing = wanted - set(found)
    if missing:
        raise FinetuneError(f"{len(missing)} items embedded from {source} could not be read again "
                            f"(e.g. content key {sorted(missing)[0][:16]})",
                            hint="the source changed while fine-tuning started; run again")
    return found


def _labelled_items(source: Any, backbone: str | None, reader_options: Any,
                    engine: Any) -> tuple[FeatureSet, dict[str, Any]] | None:
    """The items of a text ``source`` read but not embedded: a FeatureSet of their keys, refs and labels with no
    vector columns (fingerprint: the base backbone's fp32 export, made if missing, as embedding would) and each
    key's payload; None for other modalities (an image that cannot be decoded is an embedding error, skipped)."""
    import dataclasses

    from ..backbones.export import export
    from ..backbones.resolve import default_backbone, resolve_backbone
    from ..embed.items import ReaderOptions
    from ..embed.sources import open_source
    from ..sequences.backbone import backbone_vocabulary

    options = dataclasses.replace(reader_options or ReaderOptions(), labelled=True)
    src = open_source(str(source), backbone_vocabulary(options, backbone, engine), engine=engine)
    spec = resolve_backbone(backbone, engine) if backbone is not None else default_backbone(src.modality, engine)
    if spec.modality != "text" or src.modality != "text":
        return None
    keys, refs, labels, errors, payloads = [], [], [], [], {}
    for item in src:
        if item.payload is None or item.error is not None:
            errors.append(item)
            continue
        keys.append(item.key)
        refs.append(item.ref)
        labels.append(item.label)
        payloads.setdefault(item.key, item.payload)
    exported = export(spec, "fp32", settings=engine.settings, engine=engine)
    return FeatureSet(keys=keys, refs=refs, labels=labels, vectors=np.zeros((len(keys), 0), np.float32),
                      errors=errors, fingerprint=exported.fingerprint, backbone=spec.name), payloads


def _identity(spec: Any, prep: Prepared, head: str, options: FinetuneOptions) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (``epochs`` may change between runs)."""
    import hashlib

    digest = hashlib.sha256()
    for part in (prep.split.train, prep.split.val):
        for row in part:
            digest.update(f"{prep.features.keys[row]}:{prep.y[row]};".encode())
        digest.update(b"|")
    return {"backbone": spec.name, "fingerprint": prep.features.fingerprint, "head": head, "data": digest.hexdigest(),
            "options": {k: v for k, v in asdict(options).items() if k != "epochs"}}


def finetune(source: Any, backbone: str | None = None, head: str = "linear", *, out: str | Path,
             options: FinetuneOptions | None = None, init_head: Any = None, resume: bool = False,
             finetuner: str | None = None, engine: Any = None, reader_options: Any = None, progress: bool | None = None,
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune ``backbone`` + ``head`` (linear | mlp) end to end on labelled ``source``; write ``out``.

    ``init_head``: a model folder (or :class:`Model`) whose frozen-feature head to start from;
    by default the head is first fitted on the cached frozen features of the training split.
    ``resume``: continue from ``out``'s checkpoint after an interruption (without it, an
    unfinished checkpoint in ``out`` is an error, so it is never thrown away silently).
    ``finetuner``: the plugin that trains [default: the one of ``options.objective``].
    """
    from ..backbones.export import export
    from ..backbones.resolve import resolve_backbone

    engine = _engine(engine)
    options = (options or FinetuneOptions()).check()
    finetuner = finetuner or OBJECTIVES[options.objective]
    log = log or (lambda message: None)
    out = Path(out)
    checkpoint_dir = out / CHECKPOINT_DIR
    from .model_folder import check_target

    check_target(out, allow_checkpoint=True)
    has_checkpoint = checkpoint_dir.is_dir() and any(
        p.is_file() and not p.is_symlink() for p in checkpoint_dir.glob("*.safetensors"))
    if not resume and has_checkpoint:
        raise FinetuneError(f"{out} holds an unfinished fine-tuning checkpoint",
                            hint="continue it with --resume, or delete the folder to start over")
    if resume and not has_checkpoint:
        raise FinetuneError(f"{out} holds no fine-tuning checkpoint to resume"
                            + (" (it is a finished model)" if (out / "manifest.json").is_file() else ""),
                            hint="drop --resume to start a new run (into a new folder to keep this one)")
    spec_entry = engine.catalog.get("finetuner", finetuner)
    if init_head is None:
        from ..heads.resolve import build_head

        build_head(head, engine)  # bad head values are refused before any embedding
    started = time.perf_counter()
    # a finetuner that fits its own head on the tuned body never reads the frozen vectors: text items are read
    # without embedding them (no ONNX session, no store commit); they are embedded later only if it needs them
    labelled = None if (spec_entry.spec.starts_from_fitted_head or init_head is not None
                        or hasattr(source, "vectors")) else _labelled_items(source, backbone, reader_options, engine)
    fs = labelled[0] if labelled is not None else load_features(source, backbone, labelled=True, engine=engine,
                                                                 reader_options=reader_options, progress=progress)
    spec = resolve_backbone(fs.backbone, engine)
    prep = prepare(fs, options.val_fraction, options.seed)
    if len(prep.split.val) == 0:
        raise DataError("every class has a single example, so there is no validation split for early stopping",
                        hint="fine-tuning needs at least two labelled examples per class")
    # a finetuner that fits its own head (and reports the frozen baseline itself) gets the unfitted head
    frozen, head_ref, frozen_metrics = _frozen_head(prep, head, init_head, engine,
                                                    fit=spec_entry.spec.starts_from_fitted_head)
    if frozen_metrics is not None:
        log(f"frozen {head_ref} on {spec.name}: validation {options.metric} {frozen_metrics[options.metric]:.4f}")
    from ..sequences.backbone import backbone_vocabulary

    payloads = labelled[1] if labelled is not None else \
        _payloads(source, fs.keys, backbone_vocabulary(reader_options, spec, engine), engine)
    classes = np.asarray(frozen.classes_) if hasattr(frozen, "classes_") else np.unique(prep.y)
    index = {str(c): i for i, c in enumerate(classes)}
    y_idx = np.asarray([index[str(v)] for v in prep.y], dtype=np.int64)
    rows_train, rows_val = prep.split.train, prep.split.val
    request = FinetuneRequest(
        spec=spec, head=frozen, head_name=head_ref.split("(")[0].split(":")[0], classes=classes,
        train_items=[payloads[prep.features.keys[i]] for i in rows_train], train_y=y_idx[rows_train],
        val_items=[payloads[prep.features.keys[i]] for i in rows_val], val_y=y_idx[rows_val], options=options,
        checkpoint_dir=checkpoint_dir, finetuned_root=engine.settings.home / FINETUNED_DIR, resume=resume,
        identity=_identity(spec, prep, head_ref, options), log=log)
    early = _EarlyExport(engine)
    request.start_export = early.start
    try:
        outcome = spec_entry.spec.run(request)
    except (FinetuneError, ConfigError, HeadError):
        raise
    except Exception as exc:  # noqa: BLE001 - name the finetuner that failed
        raise FinetuneError(f"finetuner '{finetuner}' (plugin '{spec_entry.plugin}') failed: {type(exc).__name__}: {exc}",
                            hint="the checkpoint of the last finished epoch is kept; fix the cause and use --resume") from exc
    finally:
        early.join()
    tuned_spec = resolve_backbone(outcome.backbone_ref, engine)
    exported = export(tuned_spec, "fp32", settings=engine.settings, engine=engine)
    log(f"fine-tuned backbone exported: fingerprint {exported.fingerprint}, parity min cosine "
        f"{exported.parity['min_cosine']:.6f}")
    if "cv_metrics" in outcome.info:
        # the finetuner trained on the validation split too: its held-out folds score it, and the source is not
        # embedded again (the parity gate checked the export against the tuned model the head was fitted on)
        metrics = {**outcome.info["cv_metrics"], "split": "cross-validation"}
        tuned = FeatureSet(vectors=np.empty((0, exported.dim), np.float32), fingerprint=exported.fingerprint,
                           backbone=outcome.backbone_ref, precision="fp32")
    else:
        if labelled is not None:  # the frozen vectors are needed now (ONNX scoring, frozen baseline): embed
            prep = prepare(load_features(source, backbone, labelled=True, engine=engine, reader_options=reader_options,
                                         progress=progress), options.val_fraction, options.seed)
            rows_train, rows_val = prep.split.train, prep.split.val
        tuned = load_features(source, outcome.backbone_ref, labelled=True, engine=engine,
                              reader_options=reader_options, progress=progress)
        metrics = _score_onnx(tuned, prep, outcome.head)
    if frozen_metrics is None:  # the finetuner's own frozen baseline, else the frozen head fitted now
        frozen_metrics = outcome.info.get("frozen_metrics") or _frozen_head(prep, head, None, engine)[2]
    export_info = {"fingerprint": exported.fingerprint, "path": str(exported.path),
                   "parity": {k: exported.parity[k] for k in ("min_cosine", "max_abs_diff", "items", "reference")}}
    training = {"n_labelled": len(prep.y), "n_train": int(len(rows_train)), "n_val": int(len(rows_val)),
                "n_errors": prep.n_errors, "n_unlabelled": prep.n_unlabelled,
                "train_only_classes": list(prep.split.train_only_classes), "val_fraction": options.val_fraction,
                "seed": options.seed, "refit_on_all": False, "seconds": round(time.perf_counter() - started, 2)}
    from ..heads.spec import parse_head_ref

    manifest = make_manifest(parse_head_ref(head_ref), outcome.head, tuned, metrics, training)
    manifest["finetune"] = {
        "finetuner": finetuner, "base_backbone": {"name": spec.name, "fingerprint": fs.fingerprint},
        "options": asdict(options), "frozen_metrics": _scores(frozen_metrics), "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run, "stopped_early": outcome.stopped_early, "resumed_from": outcome.resumed_from,
        "history": outcome.history, "export": export_info, "info": outcome.info}
    from .overlap import training_digests

    model = Model(outcome.head, manifest, training_keys=training_digests(prep.features.keys[i] for i in rows_train))
    model.save(out, extra_files={f"{BACKBONE_DIR}/{Path(path).name}": path for path in outcome.backbone_files})
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return FinetuneResult(model, metrics, frozen_metrics, outcome, export_info, out)


class _EarlyExport:
    """The fp32 export of a fine-tuned backbone, started on a thread by the finetuner (``request.start_export``)
    while it finishes; the export below then finds it in the export cache. A failure here is not kept: the
    export below runs again and raises it with its own message.

    From its start until :meth:`join`, BLAS runs on one thread (entered on the thread that starts it, the main
    one): the export's parity session, its reference outputs and the finetuner's head fit run at once then,
    and each taking every core made that phase longer (fine-tune command on 2 cores, A/B runs; docs/finetune.md)."""

    def __init__(self, engine: Any) -> None:
        from contextlib import ExitStack

        self.engine, self.thread, self._one_blas_thread = engine, None, ExitStack()

    def start(self, ref: str, reference: Any = None) -> None:
        import threading

        from ..backbones.export import export
        from ..backbones.resolve import resolve_backbone

        def work() -> None:
            try:
                export(resolve_backbone(ref, self.engine), "fp32", settings=self.engine.settings, engine=self.engine,
                       reference=reference)
            except Exception:  # noqa: BLE001 - raised again, with its message, by the export after the finetuner
                pass

        if self.thread is None:
            from ..blas_threads import one_blas_thread

            self._one_blas_thread.enter_context(one_blas_thread())
            self.thread = threading.Thread(target=work, name="headstart-finetune-export", daemon=True)
            self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
        self._one_blas_thread.close()


def _score_onnx(tuned: Any, prep: Prepared, head: Any) -> dict[str, Any]:
    """Validation metrics of the fine-tuned head on features from the fine-tuned ONNX export."""
    from ..heads.validate import check_features

    row_of = {k: i for i, k in enumerate(tuned.keys)}
    missing = [prep.features.keys[i] for i in prep.split.val if prep.features.keys[i] not in row_of]
    if missing:
        raise FinetuneError(f"{len(missing)} validation items could not be embedded with the fine-tuned backbone "
                            f"(e.g. {missing[0][:16]})", hint="see `headstart cache info` for the per-item errors")
    rows = np.asarray([row_of[prep.features.keys[i]] for i in prep.split.val])
    X = check_features(tuned.vectors[rows], [tuned.keys[i] for i in rows])
    metrics = classification_metrics(prep.y[prep.split.val], head.predict(X), head.classes_)
    metrics["split"] = "validation"
    return metrics


def parse_target(text: str) -> tuple[str, float]:
    """``accuracy=0.9`` -> ("accuracy", 0.9)."""
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if name.strip() not in METRICS or not 0.0 <= number <= 1.0:
        raise ConfigError(f"cannot read target '{text}'", hint="write METRIC=VALUE, e.g. accuracy=0.9 or macro_f1=0.85")
    return name.strip(), number


@dataclass
class EscalationResult:
    """Both stages: the head sweep on cached features and, when it was needed, the fine-tuning."""

    metric: str
    target: float
    stages: list[dict[str, Any]]
    decision: str
    finetuned: bool
    model: Model | None
    path: Path

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "target": self.target, "stages": self.stages, "decision": self.decision,
                "finetuned": self.finetuned, "model": str(self.path)}


def _learning_evidence(source: Any, head: str, backbone: str | None, val_fraction: float, seed: int,
                       goal: float | None, engine: Any, embed_options: dict[str, Any]) -> dict[str, Any]:
    """The best head's learning curve on the swept (cached) features and its advice, as ``sweep --curve``
    gives it (:mod:`headstart.engine.train.curve`): evidence recorded before fine-tuning."""
    from .curve import learning_curve
    from .model import load_features

    prep = prepare(load_features(source, backbone, labelled=True, engine=engine, **embed_options), val_fraction, seed)
    return learning_curve(prep.X, prep.y, prep.split.train, prep.split.val, [head], engine, seed=seed, target=goal)


def escalate(source: Any, target: str | tuple[str, float], *, out: str | Path, backbone: str | None = None,
             heads: Sequence[str] = DEFAULT_SWEEP, allow_finetune: bool = True, options: FinetuneOptions | None = None,
             val_fraction: float = 0.2, seed: int = 0, engine: Any = None, log: Callable[[str], None] | None = None,
             **embed_options: Any) -> EscalationResult:
    """Sweep ``heads`` on cached features; fine-tune only if the best misses ``target`` (and it is allowed).

    The better of the two stages on the same validation split is written to ``out``.
    """
    import dataclasses

    metric, goal = parse_target(target) if isinstance(target, str) else target
    engine = _engine(engine)
    out = Path(out)
    swept = sweep(source, heads, backbone=backbone, val_fraction=val_fraction, seed=seed, metric=metric,
                  save_best=out, engine=engine, **embed_options)
    if swept.best is None:
        raise FinetuneError("every head failed in the sweep", hint="see the sweep table for each head's error")
    best = next(r for r in swept.rows if r["head"] == swept.best)
    stage = {"stage": "sweep", "heads": swept.rows, "best": swept.best, metric: best[metric],
             "target_met": best[metric] >= goal}
    if stage["target_met"]:
        return EscalationResult(metric, goal, [stage], f"the best head {swept.best} reached {metric} {best[metric]:.4f} "
                                f">= {goal} on validation: stopped after the head sweep, no fine-tuning needed",
                                False, swept.model, out)
    stage["curve"] = _learning_evidence(source, swept.best, backbone, val_fraction, seed,
                                        goal if metric == "accuracy" else None, engine, embed_options)
    if not allow_finetune:
        return EscalationResult(metric, goal, [stage], f"the best head {swept.best} reached {metric} {best[metric]:.4f} "
                                f"< {goal}; fine-tuning was not allowed (pass --allow-finetune); learning curve: "
                                f"{(stage['curve'].get('advice') or {}).get('text', 'none')}", False, swept.model, out)
    if options is None:  # few labels per class: the contrastive objective (the crossover measured in docs/finetune.md)
        from .curve import CONTRASTIVE_MAX_PER_CLASS

        per_class = swept.training.get("n_labelled", 0) / max(len(getattr(swept.model.head, "classes_", ())), 1)
        options = FinetuneOptions.for_objective("contrastive" if per_class <= CONTRASTIVE_MAX_PER_CLASS
                                                else "cross-entropy")
    opts = dataclasses.replace(options, metric=metric, val_fraction=val_fraction, seed=seed)
    head = swept.best if swept.best.split("(")[0] in HEADS else "linear"
    ft_out = out.with_name(out.name + ".finetune-tmp")
    result = finetune(source, backbone, head, out=ft_out, options=opts, engine=engine,
                      reader_options=embed_options.get("reader_options"), progress=embed_options.get("progress"),
                      log=log)
    ft_stage = {"stage": "finetune", "head": result.model.manifest["head"]["ref"], metric: result.metrics[metric],
                "frozen_" + metric: result.frozen_metrics[metric], "target_met": result.metrics[metric] >= goal,
                "best_epoch": result.outcome.best_epoch, "epochs_run": result.outcome.epochs_run,
                "backbone": result.model.backbone, "objective": opts.objective, "split": result.metrics.get("split")}
    if result.metrics[metric] > best[metric]:
        shutil.rmtree(out, ignore_errors=True)
        ft_out.rename(out)
        model = load_model(out, engine=engine)
        verdict = "reached" if ft_stage["target_met"] else "still missed"
        decision = (f"the best head {swept.best} reached {metric} {best[metric]:.4f} < {goal}; fine-tuning "
                    f"{verdict} the target with {metric} {result.metrics[metric]:.4f}: the fine-tuned model is kept")
        return EscalationResult(metric, goal, [stage, ft_stage], decision, True, model, out)
    shutil.rmtree(ft_out, ignore_errors=True)
    decision = (f"the best head {swept.best} reached {metric} {best[metric]:.4f} < {goal}; fine-tuning reached only "
                f"{result.metrics[metric]:.4f}: the frozen-feature head is kept")
    return EscalationResult(metric, goal, [stage, ft_stage], decision, False, swept.model, out)
