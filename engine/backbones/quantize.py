"""Precision variants of an fp32 graph: int8 (CPU) and fp16 (CUDA), plus the transformer graph optimiser."""

from __future__ import annotations

import tempfile

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import BackboneError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .spec import Int8Recipe


def fuse_transformer(model_path: Path, skip_layernorm: bool = True) -> bytes | None:
    """onnxruntime's BERT optimiser (Attention, LayerNorm, Gelu fusions); ``None`` if it cannot fuse.

    ``skip_layernorm=False`` keeps each residual Add apart from its LayerNormalization (onnxruntime's
    CPU SkipLayerNormalization kernel is the slower one; see ``runtime.CPU_DISABLED_OPTIMIZERS``).
    Offline fusions only (``opt_level=0``): the session applies its own hardware-specific
    optimisations at load time.
    """
    import logging

    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = skip_layernorm
    try:
        optimized = optimize_model(str(model_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                   use_gpu=False, optimization_options=options)
    except Exception:  # noqa: BLE001 - the graph is still valid unfused; parity gates the result either way
        return None
    fused = optimized.get_fused_operator_statistics()
    if not any(fused.get(op, 0) for op in ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")):
        return None
    model = optimized.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)  # the fused ops live there; checkers need it
    return model.SerializeToString()


#: Why every int8 graph here has its weights in 7 bits (onnxruntime's ``reduce_range``): on x86 CPUs without
#: AVX512-VNNI onnxruntime's uint8 x int8 kernels add pairs of products in saturating 16-bit integers, so a graph
#: with 8-bit weights gives other numbers there than on the machine that gated it (measured under
#: `qemu-x86_64 -cpu Haswell`: EfficientNet-Lite0 int8 min cosine 0.970 to its own output on a VNNI CPU,
#: MiniLM int8 0.964). In 7 bits no pair can saturate: the same graph computes alike on every x86 CPU.
REDUCE_RANGE = True


def quantize_dynamic_int8(src: Path, dst: Path, ops: Iterable[str], *, exclude: Iterable[str] = (),
                          only: Iterable[str] | None = None) -> None:
    """onnxruntime's dynamic int8 of the ``ops`` nodes of ``src`` into ``dst``: weights per channel, in 7 bits
    (:data:`REDUCE_RANGE`); ``exclude``: nodes kept fp32; ``only``: quantise just these nodes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        # fused com.microsoft ops defeat onnx shape inference; their float tensors are FLOAT
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=REDUCE_RANGE, op_types_to_quantize=list(ops), nodes_to_exclude=list(exclude),
                         nodes_to_quantize=list(only) if only is not None else None,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def int8_dynamic(src: Path, dst: Path, recipe: "Int8Recipe") -> list[str]:
    """Dynamic int8 quantisation, weights per channel, of ``recipe.ops``: for transformers.

    Returns the names of the nodes kept fp32 (``recipe.fp32_nodes``).
    """
    kept = matching_nodes(src, recipe.fp32_nodes)
    quantize_dynamic_int8(src, dst, recipe.ops, exclude=kept)
    return kept


def matching_nodes(model_path: Path, patterns: tuple[str, ...]) -> list[str]:
    """Names of the graph's nodes that match one of the regular expressions ``patterns``."""
    import re

    import onnx

    if not patterns:
        return []
    compiled = [re.compile(p) for p in patterns]
    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    return [n.name for n in nodes if any(c.search(n.name) for c in compiled)]


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger; keep it out of the user's output."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def int8_static(src: Path, dst: Path, batches: list[dict[str, "np.ndarray"]], recipe: "Int8Recipe") -> list[str]:
    """Static per-channel QDQ int8 (weights in 7 bits) calibrated (MinMax) on ``batches`` of the user's data: for
    CNNs.

    The nodes up to the ``recipe.fp32_convs``-th convolution and those matching
    ``recipe.fp32_nodes`` stay fp32; returns their names.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    try:
        with _quiet_root_logger(), tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            # Fold BatchNorm into Conv and infer shapes first: on EfficientNet-Lite0 this took the
            # calibrated graph from mean cosine 0.78 to 0.96 against fp32, and 1.8x faster.
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(src), str(prepared))
            kept = leading_nodes(prepared, recipe.fp32_convs)
            kept += [n for n in matching_nodes(prepared, recipe.fp32_nodes) if n not in kept]
            quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=REDUCE_RANGE, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=kept)
    except Exception as exc:  # noqa: BLE001
        raise BackboneError(f"static int8 quantisation of {src} failed: {type(exc).__name__}: {exc}",
                            hint="use fp32, or check the calibration items") from exc
    return kept


def leading_nodes(model_path: Path, convs: int) -> list[str]:
    """Names of the graph's nodes (topological order) before the ``convs + 1``-th Conv."""
    import onnx

    if convs <= 0:
        return []
    names: list[str] = []
    seen = 0
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        if node.op_type == "Conv":
            seen += 1
            if seen > convs:
                break
        names.append(node.name)
    return names


def fp16(src: Path) -> bytes:
    """fp16 weights and compute, float32 inputs and outputs (for the CUDA provider)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    return model.SerializeToString()


def split_calibration(items: list[Any], every: int = 5, min_items: int = 20) -> tuple[list[Any], list[Any]]:
    """(items to calibrate on, items to check parity on): every ``every``-th item is held out; with fewer
    than ``min_items`` all items do both (too few to spare)."""
    if len(items) < min_items:
        return items, items
    return [x for i, x in enumerate(items) if i % every], items[::every]


def calibration_batches(preprocessor: Any, items: Iterable[Any], batch_size: int = 16) -> list[dict[str, "np.ndarray"]]:
    """Prepare and collate calibration items, skipping bad ones; error if none is usable."""
    prepared = [p for p in preprocessor.prepare_many(list(items)) if not isinstance(p, Exception)]
    if not prepared:
        raise BackboneError("no usable calibration items for static int8 quantisation",
                            hint="pass a few hundred representative items of your own data (calibration=...)")
    return [preprocessor.collate(prepared[i:i + batch_size]) for i in range(0, len(prepared), batch_size)]
