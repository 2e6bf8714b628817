"""Human-readable tables for metrics and sweeps, and prediction files (csv, jsonl, parquet)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import ConfigError
from ..store.atomic import write_bytes_atomic

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_metrics(metrics: dict[str, Any], *, confusion: bool = False) -> str:
    """Summary line, per-class precision/recall/F1/support, optionally the confusion matrix."""
    where = metrics.get("split", "evaluation")
    lines = [f"{where}: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  n {metrics['n']}"]
    extra = [f"{k} {metrics[k]}" for k in ("n_errors", "n_unseen_labels", "n_unlabelled") if metrics.get(k)]
    if "fit_seconds" in metrics:
        extra.append(f"fit {metrics['fit_seconds']:.3f}s  predict {metrics['predict_seconds']:.3f}s")
    if extra:
        lines.append("  ".join(extra))
    if metrics.get("n_seen_in_training"):
        lines.append(f"warning: {metrics['n_seen_in_training']} of the {metrics['n']} evaluation items were in the "
                     "model's training data, so these scores are optimistic; evaluate on held-out data")
    if metrics.get("unseen_labels"):
        lines.append("labels the model never saw: " + ", ".join(map(str, metrics["unseen_labels"])))
    if metrics.get("subsample"):
        sub = metrics["subsample"]
        lines.append(f"note: fitted on a stratified subsample of {sub['rows']} of {sub['of']} training rows "
                     f"(the in-memory budget of {sub['budget_bytes'] >> 20} MiB of features)")
    if metrics.get("calibration"):
        from .calibration import format_calibration

        lines.append(format_calibration(metrics["calibration"]))
    if metrics.get("binary"):
        lines.extend(format_binary(metrics["binary"], metrics.get("decision")))
    per_class = metrics.get("per_class", {})
    lines.append(_table(["class", "precision", "recall", "f1", "support"],
                        [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
                         for c, m in per_class.items()]))
    if confusion:
        classes = [str(c) for c in metrics["classes"]]
        lines.append("confusion (rows: true, columns: predicted)")
        lines.append(_table(["", *classes], [[c, *row] for c, row in zip(classes, metrics["confusion"])]))
    return "\n".join(lines)


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_binary(binary: dict[str, Any], decision: dict[str, Any] | None = None) -> list[str]:
    """Two-class lines: positive class and prevalence, ROC-AUC, PR-AUC, recall at each operating point, and
    the decision threshold (chosen on validation) with what it gives."""
    lines = [f"positive '{binary['positive']}' ({binary['n_positive']} items, prevalence {_num(binary['prevalence'])}): "
             f"ROC-AUC {_num(binary['roc_auc'])}  PR-AUC {_num(binary['average_precision'])}"]
    points = [f"{'precision' if rule.startswith('recall') else 'recall'}@{rule} "
              f"{_num(p['precision' if rule.startswith('recall') else 'recall']) if p['met'] else 'unreachable'}"
              for rule, p in binary.get("operating_points", {}).items()]
    if points:
        lines.append("  ".join(points) + "  (best thresholds on these items)")
    if decision:
        v = decision["validation"]
        lines.append(f"decision threshold {decision['threshold']:.6g} ({decision['rule']} on {decision.get('split', 'validation')}): "
                     f"precision {_num(v['precision'])}  recall {_num(v['recall'])}  fpr {_num(v['fpr'])}")
    at = binary.get("at_threshold")
    if at:
        lines.append(f"at the model's threshold {at['threshold']:.6g} ({at['rule']}): precision {_num(at['precision'])}  "
                     f"recall {_num(at['recall'])}  fpr {_num(at['fpr'])}  flagged {at['n_flagged']}")
    return lines


def format_sweep(rows: list[dict[str, Any]], metric: str) -> str:
    """One comparison table; the best head is marked with ``*`` (two classes: ROC-AUC and PR-AUC columns)."""
    binary = any("roc_auc" in r for r in rows)
    rule = any("recall_at_rule" in r for r in rows)
    notes = [f"{r['head']}: {r['threshold_error']}" for r in rows if r.get("threshold_error")]
    table = []
    for r in rows:
        extra = ([_num(r.get("roc_auc")), _num(r.get("average_precision"))] if binary else []) + \
            ([_num(r.get("recall_at_rule"))] if rule else [])
        if "error" in r:
            table.append([r["head"], "-", "-", *["-"] * len(extra), "-", "-", "failed: " + r["error"]])
        else:
            table.append([r["head"], f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", *extra, f"{r['fit_seconds']:.3f}",
                          f"{r['predict_seconds']:.3f}", "*" if r["best"] else ""])
    headers = ["head", "accuracy", "macro_f1", *(["roc_auc", "pr_auc"] if binary else []),
               *(["recall@threshold"] if rule else []), "fit_s", "predict_s", f"best ({metric})"]
    return _table(headers, table) + "".join(f"\nnote: {n}" for n in notes)


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"cannot write predictions to '{path}'", hint="use a .csv, .jsonl or .parquet file name")
    return FORMATS[suffix]


PREDICTION_COLUMNS = ["key", "ref", "label", "probabilities", "error"]


def write_predictions(predictions: Any, path: str | Path) -> Path:
    """Write one row per item (key, ref, label, probabilities, error) atomically; returns the path."""
    block = (list(predictions.keys), list(predictions.refs), list(predictions.labels), predictions.proba)
    return write_prediction_blocks([block], predictions.errors, predictions.classes, path)


def write_prediction_blocks(blocks: Iterable[tuple[list[Any], list[Any], list[Any], Any]], errors: list[Any],
                            classes: list[Any], path: str | Path) -> Path:
    """Write predictions block by block (``(keys, refs, labels, proba or None)`` each), then one row per
    error, atomically: only one block's rows are held at a time, whatever the number of items."""
    fmt = output_format(path)
    names = [str(c) for c in classes]

    def records() -> Iterator[list[dict[str, Any]]]:
        for keys, refs, labels, proba in blocks:
            probs = [None] * len(keys) if proba is None else \
                [dict(zip(names, row)) for row in np.asarray(proba, dtype=np.float64).tolist()]
            yield [{"key": k, "ref": r, "label": label, "probabilities": p, "error": None}
                   for k, r, label, p in zip(keys, refs, labels, probs)]
        if errors:
            yield [{"key": getattr(e, "key", None), "ref": getattr(e, "ref", None), "label": None,
                    "probabilities": None, "error": getattr(e, "reason", str(e))} for e in errors]

    write_bytes_atomic(path, {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[fmt](records()))
    return Path(path)


def _jsonl(parts: Iterable[list[dict[str, Any]]]) -> Iterator[bytes]:
    for rows in parts:
        yield "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _csv(parts: Iterable[list[dict[str, Any]]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PREDICTION_COLUMNS)
    writer.writeheader()
    for rows in parts:
        for r in rows:
            probs = r["probabilities"]
            writer.writerow({**r, "probabilities": "" if probs is None else json.dumps(probs)})
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode()


class _Collect(io.RawIOBase):
    """A write-only sink whose bytes are taken out after each row group (streaming a Parquet file)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _parquet(parts: Iterable[list[dict[str, Any]]]) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("ref", pa.string()), ("label", pa.string()),
                        ("probabilities", pa.map_(pa.string(), pa.float64())), ("error", pa.string())])
    sink = _Collect()
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema) as writer:
        for rows in parts:
            writer.write_table(pa.table({
                "key": [r["key"] for r in rows], "ref": [r["ref"] for r in rows],
                "label": [None if r["label"] is None else str(r["label"]) for r in rows],
                "probabilities": [None if r["probabilities"] is None else list(r["probabilities"].items())
                                  for r in rows],
                "error": [r["error"] for r in rows]}, schema=schema))
            yield sink.drain()
    yield sink.drain()
