"""The report's plots: matplotlib figures rendered to inline SVG strings (no files, no network).

Every drawn element that stands for a class, a head or a bin carries an SVG id (matplotlib's ``gid``):
``cell-<i>-<j>`` (confusion counts), ``precision-<i>`` / ``recall-<i>`` (bars), ``reliability-before`` /
``reliability-after``, ``curve-<n>`` (one line per head), ``sweep-<n>``, ``l2-path``, so a reader (or a
test) can find them in the page.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "headstart"})
    return plt


def _svg(fig: Any) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


def _short(label: Any, width: int = 18) -> str:
    text = str(label)
    return text if len(text) <= width else text[: width - 1] + "…"


def confusion_heatmap(confusion: Sequence[Sequence[int]], classes: Sequence[Any]) -> str:
    """Rows true, columns predicted; each row coloured by its share (recall), counts written in the cells."""
    plt = _pyplot()
    m = np.asarray(confusion, dtype=np.float64)
    k = len(classes)
    shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = min(1.2 + 0.45 * k, 14)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8 if k <= 20 else 6,
                    color="white" if shares[i, j] > 0.5 else "black", gid=f"cell-{i}-{j}")
    ax.set_xticks(range(k), [_short(c) for c in classes], rotation=60, ha="right")
    ax.set_yticks(range(k), [_short(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _svg(fig)


def precision_recall_bars(per_class: dict[str, dict[str, float]]) -> str:
    """Precision and recall of each class side by side."""
    plt = _pyplot()
    classes = list(per_class)
    k = len(classes)
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * k, 16), 3.2))
    for offset, key, colour in ((-0.2, "precision", "#4c72b0"), (0.2, "recall", "#dd8452")):
        bars = ax.bar(x + offset, [per_class[c][key] for c in classes], 0.4, label=key, color=colour)
        for i, bar in enumerate(bars):
            bar.set_gid(f"{key}-{i}")
    ax.set_xticks(x, [_short(c) for c in classes], rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", ncols=2)
    return _svg(fig)


def reliability_diagram(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    """Accuracy against confidence per bin, before (and after) calibration; the diagonal is perfect."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, record, colour in (("before", before, "#c44e52"), ("after", after, "#55a868")):
        if record is None:
            continue
        points = [(b["confidence"], b["accuracy"]) for b in record["bins"] if b["count"]]
        if points:
            xs, ys = zip(*points)
            line, = ax.plot(xs, ys, marker="o", color=colour,
                            label=f"{name} calibration (ECE {record['ece']:.3f}, log-loss {record['log_loss']:.3f})")
            line.set_gid(f"reliability-{name}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=7)
    return _svg(fig)


def learning_curve_plot(curve: dict[str, Any]) -> str:
    """Mean validation accuracy (± std band) by training size, one line per head, the trend's 2× point dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sizes = np.asarray(curve["sizes"], np.float64)
    for n, (ref, head) in enumerate(curve["heads"].items()):
        if "error" in head:
            continue
        mean, std = np.asarray(head["mean"]), np.asarray(head["std"])
        line, = ax.plot(sizes, mean, marker="o", label=_short(ref, 40))
        line.set_gid(f"curve-{n}")
        ax.fill_between(sizes, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        ax.plot([sizes[-1], 2 * sizes[-1]], [mean[-1], head["trend"]["accuracy_at_2n"]], linestyle="--",
                color=line.get_color(), linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training items (log scale; dashed: trend to 2×)")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=7)
    return _svg(fig)


def sweep_bars(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """The metric of each head (the best one darker), failed heads left out."""
    plt = _pyplot()
    scored = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(5.5, 0.6 + 0.45 * max(len(scored), 1)))
    for n, r in enumerate(scored):
        bar = ax.barh(n, r[metric], color="#2a6f97" if r.get("best") else "#9ecae1")[0]
        bar.set_gid(f"sweep-{n}")
        ax.text(r[metric], n, f" {r[metric]:.4f}  ({r['fit_seconds']:.2f} s)", va="center", fontsize=8)
    ax.set_yticks(range(len(scored)), [_short(r["head"], 40) for r in scored])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25)
    ax.set_xlabel(f"validation {metric}")
    return _svg(fig)


def l2_path_plot(path: Sequence[dict[str, float]]) -> str:
    """The linear head's k-fold path: mean validation log-loss (± one standard error) by L2 strength."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    l2 = np.asarray([p["l2"] for p in path])
    loss = np.asarray([p["val_loss"] for p in path])
    se = np.asarray([p.get("val_loss_se", 0.0) for p in path])
    line = ax.errorbar(l2, loss, yerr=se, marker="o", capsize=3)
    line.lines[0].set_gid("l2-path")
    chosen = [p for p in path if p.get("chosen")]
    if chosen:
        ax.axvline(chosen[0]["l2"], color="#c44e52", linestyle="--", linewidth=1, label="chosen (one-SE rule)")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("L2 strength (on the folds' training size)")
    ax.set_ylabel("mean validation log-loss")
    return _svg(fig)
