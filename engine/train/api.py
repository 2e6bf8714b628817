"""The training API: ``train``, ``sweep``, ``evaluate``, ``predict`` (the CLI calls exactly these).

A ``source`` is anything :func:`headstart.engine.embed.pipeline.embed` reads (embedded through the feature
store: cached items cost nothing), an ``EmbedResult``, or a :class:`~headstart.engine.heads.features.FeatureSet`
(your own vectors). Training data needs labels; rows without one are left out and counted.

Features stay where they are (rows of the feature store, read chunk by chunk): streaming heads fit
on them out of core, other estimators get at most ``IN_MEMORY_BYTES`` of training rows (a stratified
subsample above that, recorded under ``subsample`` in the metrics and the manifest's training summary).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError, HeadstartError
from ..heads.features import FeatureMatrix, FeatureSet, check_finite, fit_input, predict_in_chunks
from ..heads.resolve import build_head
from ..heads.spec import HeadRef, parse_head_ref
from .metrics import DEFAULT_RULES, ThresholdRule, choose_threshold, classification_metrics, parse_threshold_rule, rare_event_metrics
from .model import Model, Predictions, load_features, load_model, make_manifest
from .splits import Split, stratified_split

DEFAULT_SWEEP = ("linear", "mlp", "knn", "sklearn:LogisticRegression(max_iter=1000)")
RARE_EVENT_METRICS = ("roc_auc", "average_precision")
SWEEP_METRICS = ("accuracy", "macro_f1", *RARE_EVENT_METRICS)


@dataclass
class Prepared:
    """Labelled, finite training data and its validation split (labels as an object array of shared
    label strings, 8 bytes per row; ``classes``/``counts``: the distinct labels, sorted, and their counts)."""

    features: FeatureSet
    X: FeatureMatrix  # labelled rows, all finite; read chunk by chunk
    y: np.ndarray
    split: Split
    n_unlabelled: int
    n_errors: int
    seed: int = 0
    classes: np.ndarray | None = None
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.classes is None:
            from ..heads.validate import unique_inverse

            self.classes, inverse = unique_inverse(self.y)
            self.counts = np.bincount(inverse, minlength=len(self.classes))

    @property
    def positive(self) -> str | None:
        """A two-class task's positive class: the rarer label (see :func:`~.metrics.positive_class`)."""
        if len(self.classes) != 2:
            return None
        if self.counts[0] != self.counts[1]:
            return str(self.classes[int(np.argmin(self.counts))])
        return str(self.classes[-1])


def prepare(fs: FeatureSet, val_fraction: float, seed: int) -> Prepared:
    """Drop unlabelled rows, refuse NaN/Inf (naming the keys), need two classes, split stratified.

    Works on the label codes of ``fs.rows``: no per-row Python object is made (the labels become an object
    array pointing at the few distinct label strings)."""
    table = fs.rows
    names = np.empty(len(table.label_names), dtype=object)
    names[:] = [str(v) for v in table.label_names]
    codes = table.label_codes
    usable = np.append(names != "", False) if len(names) else np.zeros(1, bool)  # code -1 (no label) -> False
    rows = np.flatnonzero(usable[np.where(codes < 0, len(names), codes)])
    if not len(rows):
        raise DataError(f"none of the {len(fs)} items has a label",
                        hint="train on a labelled source (label column / class folders)")
    data = fs.subset(rows) if len(rows) < len(fs) else fs
    X = check_finite(data.vectors, data.key_names)
    label_codes = codes[rows]
    present = np.bincount(label_codes, minlength=len(names))
    present_names = names[present > 0]
    distinct, inverse = np.unique(present_names.astype(str), return_inverse=True) if len(present_names) \
        else (np.empty(0, str), np.empty(0, np.int64))
    if len(distinct) < 2:
        raise DataError(f"only one class ({distinct[0]!r}) among {len(rows)} labelled items",
                        hint="a classifier needs at least two classes; check the label column")
    classes = np.empty(len(distinct), dtype=object)
    classes[:] = distinct.tolist()
    remap = np.full(len(names), -1, np.int64)  # code -> index in classes (equal strings share one)
    remap[np.flatnonzero(present > 0)] = inverse.reshape(-1)
    y_idx = remap[label_codes]
    y = classes[y_idx]
    counts = np.bincount(y_idx, minlength=len(classes))
    return Prepared(data, X, y, stratified_split(y, val_fraction, seed), len(fs) - len(rows), len(fs.errors), seed,
                    classes=classes, counts=counts)


def _columns_only(embed_options: dict[str, Any]) -> dict[str, Any]:
    """Embedding options for training: the result keeps key digests and label codes per row, not refs
    (what ``train``/``sweep`` need; see :data:`~headstart.engine.embed.job.KEEP_COLUMNS`)."""
    from ..embed.job import KEEP_COLUMNS

    return {"keep_rows": KEEP_COLUMNS, **embed_options}


def _fit_and_score(ref: HeadRef | str, prep: Prepared, engine: Any, threshold_for: ThresholdRule | None = None,
                   strict: bool = True) -> tuple[Any, HeadRef, dict[str, Any]]:
    head, canonical = build_head(ref, engine)
    train_rows = prep.split.train
    X, y, subsample = fit_input(head, prep.X, prep.y, train_rows, prep.seed)
    start = time.perf_counter()
    head.fit(X, y)
    fit_s = time.perf_counter() - start
    del X
    scored = prep.split.val if len(prep.split.val) else train_rows
    start = time.perf_counter()
    predicted = predict_in_chunks(head, prep.X[scored])
    predict_s = time.perf_counter() - start
    metrics = classification_metrics(prep.y[scored], predicted, head.classes_)
    metrics.update(split="validation" if len(prep.split.val) else "train", fit_seconds=round(fit_s, 4),
                   predict_seconds=round(predict_s, 4))
    proba = None
    if hasattr(head, "predict_proba") and (len(prep.split.val) or prep.positive is not None):
        proba = predict_in_chunks(head, prep.X[scored], "predict_proba")
    if len(prep.split.val) and proba is not None:
        from .calibration import apply_temperature, calibrate, temperature_of

        metrics["calibration"] = calibrate(proba, prep.y[scored], head.classes_)
        proba = apply_temperature(proba, temperature_of({"metrics": metrics}))  # what the model will predict
    _rare_event_scores(head, prep, scored, metrics, threshold_for, strict, proba)
    if subsample is not None:
        metrics["subsample"] = subsample
    return head, canonical, metrics


def _judge_int8(ref: Any, prep: Prepared, source: Any, backbone: str | None, val_fraction: float, engine: Any,
                embed_options: dict[str, Any]) -> tuple[Prepared, dict[str, Any] | None]:
    """With int8 features of an embedded source: the head on int8 vs fp32 features (see
    :mod:`headstart.engine.train.int8_check`); the fp32 data replaces the int8 data when int8 loses."""
    if embed_options.get("precision") != "int8" or hasattr(source, "vectors") or len(prep.split.val) == 0:
        return prep, None
    from .int8_check import judge_int8

    fp_prep = prepare(load_features(source, backbone or prep.features.backbone, labelled=True, engine=engine,
                                    **_columns_only({**embed_options, "precision": "fp32"})), val_fraction, prep.seed)
    record = judge_int8(ref, prep, fp_prep, engine)
    return (fp_prep if record["fallback"] else prep), record


def _rare_event_scores(head: Any, prep: Prepared, scored: np.ndarray, metrics: dict[str, Any],
                       threshold_for: ThresholdRule | None, strict: bool = True, proba: np.ndarray | None = None) -> None:
    """Two classes: add the ``binary`` block (ROC-AUC, PR-AUC, operating points) and, with ``threshold_for``,
    the ``decision`` (threshold chosen on the scored split) the model keeps. A rule no threshold meets is an
    error (``strict``) or recorded under ``decision_error`` (a sweep goes on). ``proba``: the scored rows'
    probabilities as the model will give them (calibrated), when the caller has them."""
    positive = prep.positive
    if positive is None or not hasattr(head, "predict_proba"):
        return
    if proba is None:
        proba = predict_in_chunks(head, prep.X[scored], "predict_proba")
    decision = None
    if threshold_for is not None:
        from .metrics import positive_scores

        negative = next(str(c) for c in head.classes_ if str(c) != positive)
        try:
            decision = choose_threshold(prep.y[scored], positive_scores(proba, head.classes_, positive), positive,
                                        negative, threshold_for)
        except DataError as exc:
            if strict:
                raise
            metrics["decision_error"] = exc.message
        else:
            metrics["decision"] = {**decision, "split": metrics["split"]}
    metrics["binary"] = rare_event_metrics(prep.y[scored], proba, head.classes_, positive,
                                           rules=[*DEFAULT_RULES, *([threshold_for] if threshold_for else [])])


def _check_threshold_task(threshold_for: ThresholdRule | None, prep: Prepared) -> None:
    """A decision threshold needs two classes (checked once the labels are known, before any fitting)."""
    if threshold_for is not None and prep.positive is None:
        raise DataError(f"--threshold-for {threshold_for} needs a two-class task; the labels hold "
                        f"{len(prep.classes)} classes", hint="drop --threshold-for, or relabel as positive/negative")


def _check_scores(estimator: Any, ref: Any, threshold_for: ThresholdRule | None) -> None:
    if threshold_for is not None and not hasattr(estimator, "predict_proba"):
        raise ConfigError(f"head '{ref}' gives no probabilities, so no decision threshold can be chosen for it",
                          hint="use a head with predict_proba (linear, mlp, knn, sklearn:LogisticRegression, ...)")


def _training(prep: Prepared, val_fraction: float, seed: int, refit: bool,
              subsample: dict[str, Any] | None = None, int8_check: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"n_items": len(prep.features) + prep.n_unlabelled, "n_labelled": len(prep.y),
            "n_train": int(len(prep.split.train)), "n_val": int(len(prep.split.val)), "n_errors": prep.n_errors,
            "n_unlabelled": prep.n_unlabelled, "train_only_classes": list(prep.split.train_only_classes),
            "val_fraction": val_fraction, "seed": seed, "refit_on_all": refit, "embedding": prep.features.stats,
            "subsample": subsample, **({"int8_check": int8_check} if int8_check else {})}


def _final(ref: HeadRef, head: Any, prep: Prepared, refit: bool, engine: Any,
           metrics: dict[str, Any]) -> tuple[Any, bool, dict[str, Any] | None]:
    """The model's head (refitted on all labelled rows when asked), whether it was, and its subsample record."""
    if not (refit and len(prep.split.val)):
        return head, False, metrics.get("subsample")
    final, _ = build_head(ref, engine)
    if hasattr(final, "start_from"):  # a streaming head resumes from the validation fit: a few more passes
        final.start_from(head)
    X, y, subsample = fit_input(final, prep.X, prep.y, np.arange(len(prep.y)), prep.seed)
    final.fit(X, y)
    return final, True, subsample


def _training_keys(prep: Prepared, refitted: bool) -> np.ndarray:
    """Digests of the keys the final head was fitted on (all labelled rows after a refit)."""
    digests = prep.features.digests
    return np.unique(digests if refitted else digests[prep.split.train])


@dataclass
class TrainResult:
    model: Model
    metrics: dict[str, Any]
    path: Path | None = None


def train(source: Any, head: str = "linear", *, backbone: str | None = None, out: str | Path | None = None,
          val_fraction: float = 0.2, seed: int = 0, refit: bool = True, engine: Any = None,
          allow_pickle: bool = False, threshold_for: str | ThresholdRule | None = None,
          **embed_options: Any) -> TrainResult:
    """Embed ``source`` (cache hits are free), fit ``head`` on a stratified train split, score it on the
    validation split, refit on all labelled rows (``refit``), and write the model folder to ``out``.

    ``embed_options`` go to :func:`headstart.engine.embed.pipeline.embed` (precision, device, batch_size,
    reader_options, progress, ...). Returns the model and its validation metrics. A head with no safe saved
    form (safetensors/skops) is refused before any work unless ``allow_pickle``; the written folder is loaded
    back and must predict as the trained head does before ``train`` returns.

    ``threshold_for`` (``precision=0.9``, ``fpr=0.01``, ``recall=0.8``; two classes): the decision threshold
    on the positive class's probability that meets it on validation is chosen and kept in the model
    (``manifest["decision"]``); ``predict`` then labels with it. Two-class metrics carry a ``binary`` block.
    """
    rule = parse_threshold_rule(threshold_for) if threshold_for is not None else None
    estimator, _ = build_head(head, engine)  # fail on a bad head ref before embedding anything
    _check_scores(estimator, head, rule)
    if out is not None:
        _check_savable(estimator, head, allow_pickle)
        from ..embed.sources import refuse_output_over_inputs
        from .model_folder import check_target

        refuse_output_over_inputs(out, [source])  # before any work: never over an input, ...
        check_target(out)  # ... never a file or someone else's folder
    fs = load_features(source, backbone, labelled=True, engine=engine, **_columns_only(embed_options))
    prep = prepare(fs, val_fraction, seed)
    _check_threshold_task(rule, prep)
    prep, int8_check = _judge_int8(head, prep, source, backbone, val_fraction, engine, embed_options)
    fitted, ref, metrics = _fit_and_score(head, prep, engine, rule)
    final, refitted, subsample = _final(ref, fitted, prep, refit, engine, metrics)
    model = Model(final, _with_decision(make_manifest(ref, final, prep.features, metrics,
                                                      {**_training(prep, val_fraction, seed, refitted, subsample,
                                                                   int8_check),
                                                       **_passes(fitted, final if refitted else None),
                                                       **_reads(prep.X),
                                                       "source": _source_path(source)})),
                  training_keys=_training_keys(prep, refitted))
    path = model.save(out, allow_pickle=allow_pickle, check_rows=_check_rows(prep)) if out is not None else None
    return TrainResult(model, metrics, path)


def _passes(fitted: Any, refitted: Any) -> dict[str, Any]:
    """Full passes over the training rows a streaming head made (``fit_passes_``; they move with float
    rounding, like timings): ``{"fit_passes": {"validation": n, "refit": m}}``, or nothing."""
    passes = {name: int(head.fit_passes_) for name, head in (("validation", fitted), ("refit", refitted))
              if getattr(head, "fit_passes_", None) is not None}
    return {"fit_passes": passes} if passes else {}


def _reads(X: FeatureMatrix) -> dict[str, Any]:
    """What training read of the store's shards (``{"reads": {...}}``; nothing for rows given in memory):
    bytes hashed by the integrity checks and bytes of rows copied, and ``passes``: their sum over the
    labelled rows' bytes (one check pass, the full-batch passes, the samples, the validation predictions)."""
    reads = getattr(X, "reads", None)
    if reads is None:
        return {}
    data = len(X) * X.dim * 4
    return {"reads": {**reads.as_dict(), "data_bytes": data, "passes": round(reads.bytes_read / max(data, 1), 2)}}


def _with_decision(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the validation-chosen decision threshold (if any) where ``Model.predict`` reads it."""
    decision = manifest["metrics"].get("decision")
    return {**manifest, "decision": decision} if decision else manifest


def _source_path(source: Any) -> str | None:
    """The training source as an absolute path (``headstart bundle`` checks the bundle on its items)."""
    import os

    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        return os.path.abspath(source)
    return None


def _check_savable(estimator: Any, ref: Any, allow_pickle: bool) -> None:
    """Refuse, before any work, a head that only pickle could save (unless the caller allows it)."""
    from ..heads.persist import no_safe_format_error, safe_format

    if not allow_pickle and safe_format(estimator) is None:
        raise no_safe_format_error(estimator, str(ref))


def _check_rows(prep: Any, n: int = 32) -> np.ndarray:
    """A few feature rows to check a saved model against the trained head."""
    return np.asarray(prep.X[:n], dtype=np.float32)


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]  # one per head: head, metric values, fit/predict seconds, best, error
    metric: str
    best: str | None
    model: Model | None = None  # the best head refitted on all rows, when save_best was given
    training: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, Any] | None = None  # learning curves and advice (curve=True), see headstart.engine.train.curve


def sweep(source: Any, heads: Sequence[str] = DEFAULT_SWEEP, *, backbone: str | None = None,
          val_fraction: float = 0.2, seed: int = 0, metric: str = "accuracy", save_best: str | Path | None = None,
          engine: Any = None, allow_pickle: bool = False, curve: bool = False,
          threshold_for: str | ThresholdRule | None = None, **embed_options: Any) -> SweepResult:
    """Fit every head on the same cached features and split; compare on validation; best marked.

    A head that fails gets a row with its error and the sweep goes on. With ``save_best`` the
    best head is refitted on all labelled rows and written there as a model folder. With ``curve``
    each head that fitted also gets a learning curve (:mod:`headstart.engine.train.curve`) and the
    result one line of advice.

    Two classes: each row also has ``roc_auc`` and ``average_precision`` (metrics for rare events; either can
    be the sweep ``metric``), and with ``threshold_for`` the recall (``recall_at_rule``) at the threshold that
    meets the rule on validation; the saved best model keeps that threshold.
    """
    if metric not in SWEEP_METRICS:
        raise ConfigError(f"unknown sweep metric '{metric}'", hint=f"use one of {', '.join(SWEEP_METRICS)}")
    rule = parse_threshold_rule(threshold_for) if threshold_for is not None else None
    if not heads:
        raise ConfigError("no heads to sweep", hint="e.g. --heads linear,mlp,knn")
    if val_fraction <= 0:
        raise ConfigError("a sweep compares heads on a validation split", hint="use val_fraction > 0")
    refs = [parse_head_ref(h) if isinstance(h, str) else h for h in heads]
    twice = sorted({str(r) for r in refs if [str(x) for x in refs].count(str(r)) > 1})
    if twice:
        raise ConfigError(f"the sweep lists {', '.join(repr(t) for t in twice)} more than once",
                          hint="name each head once (give the same head other parameters to compare them)")
    for ref in refs:  # fail on a typo (or, with save_best, a head only pickle could save) before any fitting
        estimator, _ = build_head(ref, engine)
        _check_scores(estimator, ref, rule)
        if save_best is not None:
            _check_savable(estimator, ref, allow_pickle)
    if save_best is not None:  # a bad output path fails now, not after the fitting
        from ..embed.sources import refuse_output_over_inputs
        from .model_folder import check_target

        refuse_output_over_inputs(save_best, [source], option="--save-best")
        check_target(save_best)
    fs = load_features(source, backbone, labelled=True, engine=engine, **_columns_only(embed_options))
    prep = prepare(fs, val_fraction, seed)
    _check_threshold_task(rule, prep)
    if metric in RARE_EVENT_METRICS and prep.positive is None:
        raise DataError(f"sweep metric '{metric}' needs a two-class task; the labels hold {len(prep.classes)} "
                        "classes", hint="use --metric accuracy or macro_f1")
    prep, int8_check = _judge_int8(refs[0], prep, source, backbone, val_fraction, engine, embed_options)
    rows, fitted = [], {}
    for ref in refs:
        try:
            head, canonical, metrics = _fit_and_score(ref, prep, engine, rule, strict=False)
        except HeadstartError as exc:
            rows.append({"head": str(ref), "error": exc.message})
            continue
        except Exception as exc:  # noqa: BLE001 - one broken head must not end the sweep
            rows.append({"head": str(ref), "error": f"{type(exc).__name__}: {exc}"})
            continue
        fitted[str(ref)] = (canonical, head, metrics)
        rows.append({"head": str(ref), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                     **_rare_event_row(metrics, prep),
                     "fit_seconds": metrics["fit_seconds"], "predict_seconds": metrics["predict_seconds"],
                     **({"subsample": metrics["subsample"]} if "subsample" in metrics else {})})
    scored = [r for r in rows if "error" not in r]
    if rule is not None and save_best is not None:  # the model to save must reach the rule
        scored = [r for r in scored if r.get("threshold") is not None] or scored
    best = max(scored, key=lambda r: (_rank(r.get(metric)), -r["fit_seconds"]))["head"] if scored else None
    for r in rows:
        r["best"] = r["head"] == best
    result = SweepResult(rows, metric, best, training=_training(prep, val_fraction, seed, save_best is not None,
                                                                int8_check=int8_check))
    if curve and fitted:
        from .curve import learning_curve

        result.curve = learning_curve(prep.X, prep.y, prep.split.train, prep.split.val, list(fitted), engine,
                                      seed=seed)
    if save_best is not None and best is not None:
        canonical, head, metrics = fitted[best]
        if "decision_error" in metrics:
            raise DataError(f"best head {best}: {metrics['decision_error']}; nothing was saved",
                            hint=f"ask for a lower {rule.kind}, or save another head with `headstart train --head`")
        final, refitted, subsample = _final(canonical, head, prep, True, engine, metrics)
        training = {**_training(prep, val_fraction, seed, refitted, subsample, int8_check), "sweep": rows,
                    "sweep_metric": metric, **({"curve": result.curve} if result.curve else {}),
                    "source": _source_path(source)}
        result.model = Model(final, _with_decision(make_manifest(canonical, final, prep.features, metrics, training)),
                             training_keys=_training_keys(prep, refitted))
        result.model.save(save_best, allow_pickle=allow_pickle, check_rows=_check_rows(prep))
    return result


def _rare_event_row(metrics: dict[str, Any], prep: Prepared) -> dict[str, Any]:
    """A sweep row's two-class figures (None where the head gives no probabilities)."""
    if prep.positive is None:
        return {}
    binary = metrics.get("binary") or {}
    row = {"roc_auc": binary.get("roc_auc"), "average_precision": binary.get("average_precision")}
    if "decision" in metrics:
        row.update(threshold=metrics["decision"]["threshold"], recall_at_rule=metrics["decision"]["validation"]["recall"])
    elif "decision_error" in metrics:
        row.update(threshold=None, recall_at_rule=None, threshold_error=metrics["decision_error"])
    return row


def _rank(value: Any) -> float:
    return float("-inf") if value is None or value != value else float(value)


def _model(model: Model | str | Path, trust: bool, engine: Any) -> Model:
    return model if isinstance(model, Model) else load_model(model, trust=trust, engine=engine)


def evaluate(model_dir: Model | str | Path, source: Any, *, trust: bool = False, engine: Any = None,
             **embed_options: Any) -> dict[str, Any]:
    """Score a model on labelled ``source``: accuracy, macro_f1, n, n_errors (items that could not be
    embedded), confusion (rows true, columns predicted, in ``classes`` order), classes, n_unseen_labels,
    n_seen_in_training (evaluation items the head was fitted on; None for models without the record).
    Two-class models add ``binary`` (ROC-AUC, PR-AUC, operating points, and ``at_threshold`` for a model
    with a decision threshold, whose labels then use that threshold)."""
    return _model(model_dir, trust, engine).evaluate(source, engine=engine, **embed_options)


def _files_of(model: Model | str | Path) -> list[Path]:
    """The files of a model folder (outputs must not replace them)."""
    folder = model.path if isinstance(model, Model) else Path(model)
    return [p for p in folder.iterdir() if p.is_file()] if folder is not None and folder.is_dir() else []


def predict(model_dir: Model | str | Path, source: Any, out: str | Path | None = None, *, trust: bool = False,
            engine: Any = None, store: bool | None = None, **embed_options: Any) -> Predictions:
    """Predict ``source`` with a model; with ``out`` (.csv, .jsonl or .parquet) also write one row per
    item: key, ref, label, probabilities (and, for items that could not be embedded, error).

    ``store``: embed through the feature store (True), in memory without it (False), or - the default,
    None - in memory when ``source`` holds at most ``fastpath.FAST_PATH_MAX_ITEMS`` items (see
    :mod:`.fastpath`)."""
    if out is not None:
        from ..embed.sources import refuse_output_over_inputs
        from .report import output_format

        output_format(out)  # refuse an unknown extension before embedding
        refuse_output_over_inputs(out, [source, *_files_of(model_dir)])
    model = _model(model_dir, trust, engine)
    embed_options.setdefault("labelled", False)  # new data: labels (often a blank column) are ignored
    fs = None
    if store is not True:
        from .fastpath import FAST_PATH_MAX_BYTES, FAST_PATH_MAX_ITEMS, in_memory_features

        unbounded = store is False
        fs = in_memory_features(model, source, limit=None if unbounded else FAST_PATH_MAX_ITEMS,
                                max_bytes=None if unbounded else FAST_PATH_MAX_BYTES, engine=engine, **embed_options)
    if out is None:
        return model.predict(fs if fs is not None else source, engine=engine, **embed_options)
    return _predict_to(model, fs if fs is not None else model.features(source, engine=engine, **embed_options), out)


#: rows per block of a prediction file written while predicting
PREDICT_BLOCK_ROWS = 65_536


def _predict_to(model: Model, fs: FeatureSet, out: str | Path) -> Predictions:
    """Predict ``fs`` and write ``out`` block by block: keys and refs are looked up for one block at a time
    (the returned Predictions look them up again on access), so nothing per row but the labels and
    probabilities is held."""
    from ..heads.features import KeyNames
    from .model import _plain
    from .report import write_prediction_blocks

    if len(fs) == 0:
        write_prediction_blocks([], fs.errors, model.classes, out)
        return Predictions([], [], [], None, model.classes, fs.errors)
    proba, labels = model._label(fs)
    labels = [_plain(v) for v in labels]

    def blocks():
        for start in range(0, len(fs), PREDICT_BLOCK_ROWS):
            rows = np.arange(start, min(start + PREDICT_BLOCK_ROWS, len(fs)))
            yield (fs.keys_of(rows), fs.refs_of(rows), labels[start:rows[-1] + 1],
                   None if proba is None else proba[rows])

    write_prediction_blocks(blocks(), fs.errors, model.classes, out)
    return Predictions(KeyNames(fs), KeyNames(fs, refs=True), labels, proba, model.classes, fs.errors)
