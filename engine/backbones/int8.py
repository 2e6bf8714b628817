"""Build an int8 export: quantise with the backbone's :class:`~headstart.engine.backbones.spec.Int8Recipe`, gate it,
fall back to the next recipe when the gate refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackboneError, ExportParityError
from .parity import check_parity, parity_on

if TYPE_CHECKING:  # pragma: no cover
    from .spec import BackboneSpec


def build_int8(spec: "BackboneSpec", base: Path, out: Path, pre: Any, probe: list[Any], items: list[Any] | None,
               module: Any,
               min_cosine: float | None) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """Quantise ``base`` into ``out`` with the spec's int8 recipe, or its fallbacks in turn, until one
    passes the parity gate. Returns (manifest info, the items parity was measured on, parity)."""
    from .fingerprint import calibration_digest
    from .quantize import calibration_batches, int8_dynamic, int8_static, split_calibration

    recipe, refused = spec.int8, []
    while True:
        info: dict[str, Any] = {}
        checked = probe
        if spec.modality == "text":
            kept = int8_dynamic(base, out, recipe)
            info["quantization"] = {"method": "dynamic per-channel", "ops": list(recipe.ops), "fp32_nodes": kept}
        else:
            fit, held_out = split_calibration(items or [])
            kept = int8_static(base, out, calibration_batches(pre, fit), recipe)
            info["quantization"] = {"method": "static QDQ per-channel MinMax", "calibration_items": len(items or []),
                                    "calibration_sha256": calibration_digest(items or []),
                                    "fp32_convs": recipe.fp32_convs, "fp32_nodes": kept}
            # Static int8 ranges are fitted to the user's data, so that is what the gate measures on; the
            # synthetic probe set (noise, one-pixel images) is reported beside it, not gated.
            probe_figures = parity_on(spec, probe, module, out, "int8", base)[0]
            info["probe_parity"] = {k: probe_figures[k] for k in ("min_cosine", "mean_cosine", "items")}
            readable = [p for p in pre.prepare_many(held_out) if not isinstance(p, Exception)]
            if len(readable) < 2:
                raise BackboneError(f"backbone '{spec.name}': only {len(readable)} of {len(held_out)} held-out "
                                    "calibration items could be prepared, too few to check int8 parity on",
                                    hint="pass a few hundred readable, representative items (calibration=..., "
                                         "--calibrate DIR)")
            checked = [pre.collate([p]) for p in readable]
        figures, ref_kind = parity_on(spec, checked, module, out, "int8", base)
        try:
            parity = {**check_parity(figures, spec.name, "int8", min_cosine), "reference": ref_kind}
        except ExportParityError as exc:
            if recipe.fallback is None:
                raise
            refused.append({"ops": list(recipe.ops), "fp32_nodes": kept, "min_cosine": figures["min_cosine"],
                            "reason": exc.message})
            recipe = recipe.fallback
            continue
        if "probe_parity" in info:
            parity["items_from"] = "held-out calibration items"
        info["quantization"]["refused_recipes"] = refused
        return info, checked, parity
