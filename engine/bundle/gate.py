"""The bundle's parity gate: the bundle must predict what ``headstart predict`` predicts.

On a sample of the model's training items (or ``--check-on`` data) and the backbone's probe items the
bundle's ``probabilities`` are compared with the model's (:mod:`headstart.engine.bundle.reference`):

- same precision as the model (fp32): max abs difference <= :data:`MAX_ABS_DIFF` (images:
  :data:`IMAGE_MAX_ABS_DIFF`, see there) and identical labels,
  else :class:`ExportParityError`. Text items whose in-graph token ids differ from headstart's tokenizer
  are counted apart: on training items they fail the gate, on probe items (exotic text: NUL, Greek
  capitals, voiced kana) they are recorded in the metadata and left out of the comparison.
- another precision (int8, fp16), and int8 text bundles always (dynamic int8 rescales each call, so no
  exact comparison with headstart's batches holds): label agreement with the model and the accuracy on the
  model's validation split (labelled ``--check-on`` data split as in training), refused when the bundle's
  accuracy is more than :data:`MAX_ACCURACY_DROP` below the model's; on the CPU with the bundle's session
  settings and with onnxruntime's default optimisers (as APIs without ``disabled_optimizers`` open it).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import ExportParityError

MAX_ABS_DIFF = 1e-4
#: Image bundles: the in-graph resize equals Pillow's bit for bit when Pillow resamples rows first (landscape
#: and square images, many portrait ones); Pillow 13 picks columns first for other portrait images, and then
#: pixels differ by at most one 8-bit level (checked on every gate item: :data:`MAX_PIXEL_LEVELS`).
#: On training items probabilities must agree within this (measured on photo crops: <= 6e-7); on the
#: synthetic probe images (noise strips are the worst case: up to 1.1e-2 measured) labels must agree.
IMAGE_MAX_ABS_DIFF = 5e-3
MAX_PIXEL_LEVELS = 1
MAX_ACCURACY_DROP = 0.005  # 0.5 percentage points


def compare(reference: np.ndarray, ref_labels: list[str], proba: np.ndarray, labels: list[str]) -> dict[str, Any]:
    diff = np.abs(reference.astype(np.float64) - proba.astype(np.float64)).max(axis=1) if len(proba) else np.zeros(0)
    agree = [a == b for a, b in zip(ref_labels, labels)]
    return {"items": int(len(proba)), "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
            "worst_item": int(diff.argmax()) if len(diff) else None,
            "label_agreement": float(np.mean(agree)) if agree else 1.0,
            "label_mismatches": [i for i, same in enumerate(agree) if not same]}


def check_exact(figures: dict[str, Any], what: str, refs: list[str], tolerance: float = MAX_ABS_DIFF) -> None:
    """Raise :class:`ExportParityError` when ``figures`` miss the tolerance or a label differs."""
    if figures["max_abs_diff"] <= tolerance and not figures["label_mismatches"]:
        return
    worst = refs[figures["worst_item"]] if figures["worst_item"] is not None else "?"
    raise ExportParityError(
        f"the bundle does not reproduce `headstart predict` on {what}: max abs probability difference "
        f"{figures['max_abs_diff']:.3g} (needs <= {tolerance}, worst item {worst}), "
        f"{len(figures['label_mismatches'])} different labels of {figures['items']}; no file was written",
        hint="report it with the item named; serve the model through headstart (`headstart predict`) meanwhile",
        details={"parity": figures})


def check_accuracy(model_acc: float, bundle_acc: float, agreement: float, precision: str, n: int) -> None:
    drop = model_acc - bundle_acc
    if drop > MAX_ACCURACY_DROP:
        raise ExportParityError(
            f"the {precision} bundle's validation accuracy {bundle_acc:.4f} is {100 * drop:.2f} pt below the "
            f"model's {model_acc:.4f} on {n} items (label agreement {agreement:.4f}); at most "
            f"{100 * MAX_ACCURACY_DROP:.1f} pt is accepted; no file was written",
            hint="bundle at fp32 (the default), or retrain the head on features of that precision "
                 "(`headstart train --precision int8`)")


def run_in_batches(run: Callable[[list[Any]], tuple[list[str], np.ndarray]], items: list[Any],
                   batch: int) -> tuple[list[str], np.ndarray]:
    labels: list[str] = []
    probas = []
    for start in range(0, len(items), batch):
        got_labels, got = run(items[start:start + batch])
        labels += got_labels
        probas.append(got)
    return labels, np.concatenate(probas) if probas else np.zeros((0, 0), np.float32)
