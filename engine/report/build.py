"""One self-contained HTML page about a model (or a sweep): inline SVG plots, tables, no scripts, no network.

Sections (each a ``<section id=... data-classes=...>`` holding its plot), present when their data is:
``summary``, ``confusion`` (heat map), ``per-class`` (precision/recall), ``confused-pairs`` (with example
items when a labelled TEST source is given), ``calibration`` (reliability diagram before/after),
``learning-curve`` and ``sweep`` (recorded by ``sweep --save-best [--curve]``), ``l2-path`` (the linear
head's strength choice). Without TEST the figures are the validation ones recorded at training.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import plots

CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;
background:#fff;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left}th{background:#f4f4f4}figure{margin:.5em 0}figure svg{max-width:100%;height:auto}
.advice{background:#eef6ee;border-left:4px solid #55a868;padding:.5em 1em}.note{color:#666;font-size:.85em}"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(name: str, title: str, body: str, classes: int | None = None) -> str:
    attr = f' data-classes="{classes}"' if classes is not None else ""
    return f'<section id="{name}"{attr}><h2>{html.escape(title)}</h2>{body}</section>'


def _figure(svg: str, plot: str) -> str:
    return f'<figure data-plot="{plot}">{svg}</figure>'


def page(title: str, sections: Sequence[str], subtitle: str = "") -> str:
    """The whole HTML document."""
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<h1>{html.escape(title)}</h1><p class="note">{html.escape(subtitle)} · made by headstart {made}</p>'
            + "".join(sections) + "</body></html>")


def confused_pairs(confusion: Sequence[Sequence[int]], classes: Sequence[Any], top: int = 8) -> list[tuple[str, str, int]]:
    """The ``top`` largest off-diagonal cells: (true, predicted, count)."""
    m = np.asarray(confusion)
    pairs = [(str(classes[i]), str(classes[j]), int(m[i, j])) for i in range(len(m)) for j in range(len(m))
             if i != j and m[i, j] > 0]
    return sorted(pairs, key=lambda p: -p[2])[:top]


def metric_sections(metrics: dict[str, Any], where: str, examples: dict[tuple[str, str], list[str]] | None = None,
                    calibration: dict[str, Any] | None = None) -> list[str]:
    """Summary, confusion heat map, per-class bars and table, confused pairs, reliability diagram."""
    classes = [str(c) for c in metrics["classes"]]
    k = len(classes)
    out = [_section("summary", f"Summary ({where})", _table(
        ["accuracy", "macro-F1", "items", "errors", "labels the model never saw"],
        [[f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}", metrics["n"], metrics.get("n_errors", 0),
          metrics.get("n_unseen_labels", 0)]]))]
    out.append(_section("confusion", f"Confusion matrix ({where}; rows true, columns predicted)",
                        _figure(plots.confusion_heatmap(metrics["confusion"], classes), "confusion"), k))
    per_class = {str(c): v for c, v in metrics["per_class"].items()}
    out.append(_section("per-class", "Per-class precision and recall",
                        _figure(plots.precision_recall_bars(per_class), "per-class") + _table(
                            ["class", "precision", "recall", "f1", "support"],
                            [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                             for c, v in per_class.items()]), k))
    pairs = confused_pairs(metrics["confusion"], classes)
    rows = [[t, p, n, "; ".join((examples or {}).get((t, p), [])[:3])] for t, p, n in pairs]
    body = _table(["true", "predicted as", "items", "examples"], rows) if rows else "<p>No confusions.</p>"
    if examples is None and rows:
        body += '<p class="note">Pass a labelled TEST source to see example items of each pair.</p>'
    out.append(_section("confused-pairs", "Most confused pairs", body, k))
    if calibration:
        after = calibration["after"] if calibration.get("applied") else None
        text = (f"<p>Temperature {calibration['temperature']:.3g} "
                + ("applied" if calibration.get("applied") else "not applied (it did not lower the log-loss)")
                + f", fitted on {calibration.get('fitted_on', 'validation')}; figures on {where}.</p>")
        out.append(_section("calibration", "Reliability (calibration) diagram",
                            text + _figure(plots.reliability_diagram(calibration["before"], after), "reliability"), k))
    return out


def curve_section(curve: dict[str, Any], classes: int | None = None) -> str:
    advice = curve.get("advice") or {}
    body = _figure(plots.learning_curve_plot(curve), "learning-curve")
    if advice:
        body += f'<p class="advice"><b>{html.escape(str(curve.get("best")))}</b>: {html.escape(advice["text"])}</p>'
    return _section("learning-curve", "Learning curve", body, classes)


def sweep_section(rows: Sequence[dict[str, Any]], metric: str, classes: int | None = None) -> str:
    table = _table(["head", "accuracy", "macro-F1", "fit s", "best"],
                   [[r["head"], *(["failed: " + r["error"], "", "", ""] if "error" in r else
                                  [f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['fit_seconds']:.3f}",
                                   "*" if r.get("best") else ""])] for r in rows])
    return _section("sweep", f"Head sweep (validation {metric})", _figure(plots.sweep_bars(rows, metric), "sweep")
                    + table, classes)


def _test_figures(model: Any, source: Any, engine: Any, embed_options: dict[str, Any]) -> tuple[dict[str, Any], dict, dict | None]:
    """Metrics of ``model`` on labelled ``source``, example refs per (true, predicted) pair, calibration
    figures (raw head probabilities vs the model's) on it."""
    from ..errors import DataError
    from ..train.calibration import log_loss, reliability, temperature_of

    embed_options.setdefault("labelled", True)
    fs = model.features(source, engine=engine, **embed_options)
    rows = [i for i, label in enumerate(fs.labels) if label is not None]
    if not rows:
        raise DataError("the test source has no labelled items", hint="pass labelled data as TEST")
    labelled = fs.subset(np.asarray(rows))
    metrics = model.evaluate(labelled, engine=engine)
    metrics["n_errors"] = len(fs.errors)
    predictions = model.predict(labelled, engine=engine)
    examples: dict[tuple[str, str], list[str]] = {}
    for ref, true, predicted in zip(predictions.refs, labelled.labels, predictions.labels):
        if str(true) != str(predicted):
            examples.setdefault((str(true), str(predicted)), []).append(str(ref))
    calibration = None
    if predictions.proba is not None:
        index = {str(c): i for i, c in enumerate(model.classes)}
        y_idx = np.asarray([index.get(str(v), -1) for v in labelled.labels])
        keep = y_idx >= 0
        raw = np.asarray(model.head.predict_proba(np.asarray(labelled.vectors)))[keep]
        calibrated = predictions.proba[keep]
        temperature = temperature_of(model.manifest)
        record = model.manifest.get("metrics", {}).get("calibration") or {}
        calibration = {"temperature": temperature, "applied": temperature != 1.0,
                       "fitted_on": "validation" if record else "nothing (no calibration recorded)",
                       "before": {"log_loss": log_loss(raw, y_idx[keep]), **reliability(raw, y_idx[keep])},
                       "after": {"log_loss": log_loss(calibrated, y_idx[keep]),
                                 **reliability(calibrated, y_idx[keep])}}
    return metrics, examples, calibration


def model_report(model: Any, test: Any = None, *, engine: Any = None, **embed_options: Any) -> str:
    """The HTML page about ``model`` (a :class:`~headstart.engine.train.model.Model`), on ``test`` when given."""
    manifest = model.manifest
    k = len(model.classes)
    if test is not None:
        metrics, examples, calibration = _test_figures(model, test, engine, embed_options)
        where = f"test: {test if isinstance(test, (str, Path)) else 'features'}"
    else:
        metrics, examples = dict(manifest.get("metrics") or {}), None
        calibration = metrics.get("calibration")
        where = "validation split recorded at training"
        if "confusion" not in metrics:
            from ..errors import HeadError

            raise HeadError("this model's manifest holds no validation metrics to report",
                            hint="pass a labelled TEST source: headstart report MODEL_DIR TEST -o report.html")
    sections = metric_sections(metrics, where, examples, calibration)
    training = manifest.get("training") or {}
    if training.get("curve"):
        sections.append(curve_section(training["curve"], k))
    if training.get("sweep"):
        sections.append(sweep_section(training["sweep"], training.get("sweep_metric", "accuracy"), k))
    path = getattr(model.head, "l2_path_", None)
    if path:
        sections.append(_section("l2-path", "Regularisation path (linear head, k-fold)",
                                 _figure(plots.l2_path_plot(path), "l2-path"), k))
    backbone = manifest.get("backbone") or {}
    subtitle = (f"head {manifest['head'].get('ref')} on {backbone.get('name') or 'your own features'} ({backbone.get('precision')}), "
                f"{k} classes, trained {manifest.get('created', '?')}")
    return page(f"headstart model report: {model.path.name if model.path else 'model'}", sections, subtitle)


def sweep_report(rows: Sequence[dict[str, Any]], metric: str, curve: dict[str, Any] | None = None,
                 title: str = "headstart sweep") -> str:
    """The HTML page of a head sweep alone (and its learning curves when computed)."""
    sections = [sweep_section(rows, metric)]
    if curve:
        sections.append(curve_section(curve))
    return page(title, sections, f"{len(rows)} heads compared on validation {metric}")


def check_report_name(out: str | Path) -> Path:
    """A report is an .html file (checked before any work)."""
    from ..errors import ConfigError

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"cannot write a report to '{out}'", hint="name the report file something.html")
    return out


def write_report(text: str, out: str | Path) -> Path:
    """Write the page atomically (refusing a non-.html name)."""
    from ..store.atomic import write_bytes_atomic

    out = check_report_name(out)
    write_bytes_atomic(out, text.encode("utf-8"))
    return out
