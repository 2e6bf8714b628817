"""The parity gate: compare exported-graph outputs with the reference, item by item."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ExportParityError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Default acceptance per precision: (min cosine, max abs diff or None).
TOLERANCES = {"fp32": (0.9999, 1e-4), "fp16": (0.999, None), "int8": (0.98, None)}


def parity_figures(reference: "np.ndarray", candidate: "np.ndarray") -> dict[str, Any]:
    """min/mean cosine, max abs diff and the worst item's index."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        return {"items": int(ref.shape[0]), "min_cosine": -1.0, "mean_cosine": -1.0, "max_abs_diff": float("inf"),
                "worst_item": 0, "error": f"shape {cand.shape} != reference {ref.shape}"}
    num = (ref * cand).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    cos = np.where(both_zero, 1.0, num / np.where(den == 0, 1.0, den))
    cos = np.where(np.isfinite(cand).all(1), cos, -1.0)
    return {"items": int(ref.shape[0]), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.nan_to_num(np.abs(ref - cand), nan=np.inf).max()), "worst_item": int(cos.argmin())}


def check_parity(figures: dict[str, Any], name: str, precision: str, min_cosine: float | None = None,
                 max_abs_diff: float | None = None) -> dict[str, Any]:
    """Raise :class:`ExportParityError` when ``figures`` miss the tolerance; return figures + thresholds."""
    default_cos, default_abs = TOLERANCES[precision]
    min_cos = default_cos if min_cosine is None else min_cosine
    max_abs = default_abs if max_abs_diff is None else max_abs_diff
    result = {**figures, "threshold_min_cosine": min_cos, "threshold_max_abs_diff": max_abs}
    failed = figures["min_cosine"] < min_cos or (max_abs is not None and figures["max_abs_diff"] > max_abs)
    if failed:
        raise ExportParityError(
            f"export of backbone '{name}' ({precision}) failed the parity gate: min cosine "
            f"{figures['min_cosine']:.6f} (needs >= {min_cos}), max abs diff {figures['max_abs_diff']:.3g}"
            + (f" (needs <= {max_abs})" if max_abs is not None else "")
            + f" on probe item {figures['worst_item']} of {figures['items']}"
            + (f"; {figures['error']}" if "error" in figures else ""),
            hint="the exported graph does not reproduce the model; check custom ops and pooling, or for int8/fp16 "
                 "use fp32 or lower the accepted min cosine deliberately (--min-cosine)",
        )
    return result
