"""``onnx:<path>``: bring your own ONNX graph whose output is already the embedding.

Next to ``model.onnx`` put a sidecar ``model.headstart.json`` saying how items are
prepared (paths inside it are relative to the sidecar)::

    {"modality": "numeric",                      # text | image | numeric
     "preprocessing": {"input_name": "x", "shape": [null, 8], "dtype": "float32",
                       "mask_name": "mask"},     # fields of Text/Image/NumericPreprocessing
     "dim": 64,                                  # optional when the graph's output dim is static
     "normalize": false, "description": "transaction-history encoder"}

Numeric items (e.g. one ``(steps, features)`` array per customer from ``.npy`` or
Parquet) are padded per batch along ``null`` axes. Export copies the graph (and any
external data, refusing paths that leave its folder) into the export cache and checks
that batched outputs match one-item-at-a-time outputs on a probe set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headstart import hookimpl
from headstart.engine.backbones.spec import BackboneSpec, ImagePreprocessing, NumericPreprocessing, TextPreprocessing
from headstart.engine.errors import ConfigError

PREFIX = "onnx:"
_PREP = {"text": TextPreprocessing, "image": ImagePreprocessing, "numeric": NumericPreprocessing}


def sidecar_path(model: Path) -> Path:
    return model.with_suffix(".headstart.json")


def _preprocessing(modality: str, data: dict[str, Any], base: Path) -> Any:
    fields = dict(data)
    for key in ("shape", "inputs", "mean", "std", "background"):
        if key in fields and fields[key] is not None:
            fields[key] = tuple(fields[key])
    if modality == "text" and "tokenizer" in fields:
        fields["tokenizer"] = str((base / fields["tokenizer"]).resolve())
    fields.pop("kind", None)
    return _PREP[modality](**fields)


def _graph_output(model: Path) -> tuple[str, int | None]:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    out = graph.output[0]
    dims = out.type.tensor_type.shape.dim
    last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
    return out.name, last


def onnx_spec(ref: str) -> BackboneSpec:
    model = Path(ref[len(PREFIX):]).expanduser().resolve()
    side = sidecar_path(model)
    hint = f"put the graph at {model} and its preprocessing in {side} (see `headstart backbones` docs)"
    if not model.is_file():
        raise ConfigError(f"ONNX file {model} does not exist", hint=hint)
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the preprocessing sidecar {side}: {exc}", hint=hint) from None
    modality = meta.get("modality")
    if modality not in _PREP:
        raise ConfigError(f"{side}: modality must be text, image or numeric, got {modality!r}", hint=hint)
    try:
        prep = _preprocessing(modality, meta.get("preprocessing", {}), side.parent)
    except TypeError as exc:
        raise ConfigError(f"{side}: bad preprocessing: {exc}", hint=hint) from None
    output, graph_dim = _graph_output(model)
    dim = int(meta.get("dim") or graph_dim or 0)
    if dim <= 0:
        raise ConfigError(f"{side}: the graph's output dim is dynamic; set \"dim\"", hint=hint)
    return BackboneSpec(
        name=ref,
        modality=modality,
        source=f"ONNX file {model}",
        preprocessing=prep,
        dim=dim,
        pooling=meta.get("pooling", "none"),
        normalize=bool(meta.get("normalize", False)),
        description=meta.get("description", f"bring-your-own ONNX {model.name}"),
        weights=(str(side),),
        onnx_file=str(model),
        output_name=output,
    )


@hookimpl
def resolve_backbone(ref):
    return onnx_spec(ref) if isinstance(ref, str) and ref.startswith(PREFIX) else None
