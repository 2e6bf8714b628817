"""The parity gate: run the probe (or held-out items) through the reference and the exported graph,
compare item by item, refuse what misses the tolerance."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BackboneError, ConfigError, ExportParityError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .spec import BackboneSpec

#: Items per batch when the candidate graph runs the probe (small, so padding bugs show up).
PARITY_BATCH = 4

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


def probe_items(spec: "BackboneSpec") -> list[Any]:
    """The spec's own probe items, else the default probe set of its modality."""
    from .probes import default_probe, probe_arrays

    if spec.probe is not None:
        return list(spec.probe())
    if spec.modality == "numeric":
        shape = spec.preprocessing.shape
        if not shape:
            raise ConfigError(f"numeric backbone '{spec.name}' declares no item shape, so no probe can be made",
                              hint="set preprocessing.shape (None for dynamic axes) or give the spec a probe")
        return probe_arrays(shape, spec.preprocessing.dtype)
    return default_probe(spec.modality)


def probe_batches(spec: "BackboneSpec", pre: Any) -> list[Any]:
    """The prepared probe items, each collated alone (bad items are a bug in the probe set: raise)."""
    prepared = pre.prepare_many(probe_items(spec))
    bad = [(i, p) for i, p in enumerate(prepared) if isinstance(p, Exception)]
    if bad:
        raise BackboneError(f"backbone '{spec.name}': probe item {bad[0][0]} could not be prepared: {bad[0][1]}",
                            hint="fix the backbone's probe set or preprocessing")
    if len(prepared) < 2:
        raise BackboneError(f"backbone '{spec.name}': the parity probe needs at least 2 items",
                            hint="give the spec a probe with 16 or more items")
    return [pre.collate([p]) for p in prepared]


def parity_on(spec: "BackboneSpec", singles: list[Any], module: Any, candidate_path: Path, precision: str,
              reference_graph: Path, expected: Callable[[], tuple["np.ndarray", str]] | None = None
              ) -> tuple[dict[str, Any], str]:
    """Parity figures of the graph at ``candidate_path`` against the reference on ``singles``.

    The reference is the PyTorch model when the spec has one (``module``, built if ``None``), else the fp32
    graph at ``reference_graph`` run one item at a time; ``expected``: returns its outputs, computed elsewhere
    (:func:`reference_outputs`, e.g. a future's ``result``: the candidate runs first, meanwhile)."""
    order = list(range(len(singles)))
    if precision == "int8" and spec.modality == "text":
        # Dynamic int8 scales each batch by its own range (padding included), so it is measured the way
        # the pipeline runs text: length-sorted batches. Padding bugs were gated on the fp32 graph.
        order.sort(key=lambda i: max(a.shape[-1] for a in singles[i].values()))
    candidate = run_onnx(candidate_path, [singles[i] for i in order], spec.name, precision, batch_size=PARITY_BATCH)
    candidate[order] = candidate.copy()
    reference, ref_kind = expected() if expected is not None else reference_outputs(spec, singles, module,
                                                                                    reference_graph)
    return parity_figures(reference, candidate), ref_kind


def reference_outputs(spec: "BackboneSpec", singles: list[Any], module: Any,
                      reference_graph: Path) -> tuple["np.ndarray", str]:
    """What the candidate must reproduce: the model when there is one (PyTorch; or a numpy twin passed as
    ``module``: ``framework == "numpy"``, e.g. the body a finetuner trained), else the fp32 graph item by item."""
    if spec.build_torch is not None or getattr(module, "framework", None) == "numpy":
        import numpy as np

        # length-sorted batches: one padded batch of every probe item pads the short ones to the longest
        order = sorted(range(len(singles)), key=lambda i: tuple(a.shape for a in singles[i].values()))
        batches = merge_singles([singles[i] for i in order], PARITY_BATCH)
        if getattr(module, "framework", None) == "numpy":
            out, kind = np.concatenate([np.asarray(module(**batch), np.float32) for batch in batches]), "numpy"
        else:
            from .torch_export import build_module, run_module

            out, kind = run_module(module if module is not None else build_module(spec), batches), "pytorch"
        ref = np.empty_like(out)
        ref[order] = out
        return ref, kind
    return run_onnx(reference_graph, singles, spec.name, "fp32", batch_size=1), "onnx fp32, one item per batch"


def merge_singles(singles: list[dict[str, "np.ndarray"]], size: int) -> list[dict[str, "np.ndarray"]]:
    """Group single-item batches into padded batches of ``size`` (right-padding with zeros)."""
    import numpy as np

    merged = []
    for start in range(0, len(singles), size):
        group = singles[start:start + size]
        batch = {}
        for name in group[0]:
            arrs = [g[name] for g in group]
            shape = tuple(max(a.shape[d] for a in arrs) for d in range(1, arrs[0].ndim))
            out = np.zeros((sum(a.shape[0] for a in arrs), *shape), dtype=arrs[0].dtype)
            for row, a in enumerate(arrs):
                out[(slice(row, row + 1), *(slice(0, n) for n in a.shape[1:]))] = a
            batch[name] = out
        merged.append(batch)
    return merged


def run_onnx(path: Path, singles: list[dict[str, "np.ndarray"]], name: str, precision: str,
              batch_size: int) -> "np.ndarray":
    """Run the graph at ``path`` on the probe (CUDA for fp16 when present, else CPU)."""
    import numpy as np
    import onnxruntime as ort

    from .runtime import CPU_DISABLED_OPTIMIZERS, _cuda_driver_loadable

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # a one-off session, often beside other work (a fine-tune's head fit, the reference model): its idle
    # threads wait without spinning on the cores that work needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if precision == "fp16" and "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_driver_loadable():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        disabled = list(CPU_DISABLED_OPTIMIZERS) if providers[0] == "CPUExecutionProvider" else []
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers, disabled_optimizers=disabled)
        output = session.get_outputs()[0].name
        outs = [session.run([output], b)[0] for b in merge_singles(singles, batch_size)]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        hint = ("fp16 exports need the CUDA provider (onnxruntime-gpu with CUDA libraries)" if precision == "fp16"
                else "check the graph's inputs against the backbone's preprocessing")
        raise BackboneError(f"backbone '{name}' ({precision}): onnxruntime could not run the exported graph: {exc}",
                            hint=hint) from exc
    return np.concatenate(outs).astype(np.float32)
