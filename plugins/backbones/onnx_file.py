"""``onnx:<path>``: bring your own ONNX graph whose output is already the embedding.

Next to ``model.onnx`` put a sidecar ``model.headstart.json`` saying how items are
prepared (paths inside it are relative to the sidecar)::

    {"modality": "numeric",                      # text | image | numeric
     "preprocessing": {"input_name": "x", "shape": [null, 8], "dtype": "float32",
                       "mask_name": "mask",      # fields of Text/Image/NumericPreprocessing
                       "vocabulary": "vocabulary.json"},  # event sequences: categorical ids
     "dim": 64,                                  # optional when the graph's output dim is static
     "normalize": false, "description": "transaction-history encoder"}

Numeric items (e.g. one ``(steps, features)`` array per customer from ``.npy`` or
Parquet) are padded per batch along ``null`` axes. Export copies the graph (and any
external data, refusing paths that leave its folder) into the export cache and checks
that batched outputs match one-item-at-a-time outputs on a probe set.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from headstart.sdk import (BackboneError, BackboneSpec, check_regular_file, ConfigError, confined_file,
                           HeadstartError, hookimpl, ImagePreprocessing, NumericPreprocessing, read_confined,
                           TextPreprocessing)

PREFIX = "onnx:"
_PREP = {"text": TextPreprocessing, "image": ImagePreprocessing, "numeric": NumericPreprocessing}
_TOP = {"modality": str, "preprocessing": dict, "dim": int, "normalize": bool, "description": str, "pooling": str}


def sidecar_path(model: Path) -> Path:
    return model.with_suffix(".headstart.json")


def _fits(value: Any, hint: Any) -> bool:
    """``value`` (from JSON) fits the type annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _preprocessing(modality: str, data: dict[str, Any], base: Path, side: Path) -> Any:
    cls = _PREP[modality]
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    fields = dict(data)
    fields.pop("kind", None)
    for key, value in fields.items():
        if key not in names:
            raise ConfigError(f"{side}: preprocessing field '{key}' is not a {modality} preprocessing field",
                              hint=f"fields: {', '.join(sorted(names - {'kind'}))}")
        if not _fits(value, hints[key]):
            raise ConfigError(f"{side}: preprocessing field '{key}' has the wrong type ({value!r})",
                              hint=f"it must be {hints[key]}".replace("typing.", ""))
    for key in ("shape", "inputs", "mean", "std", "background"):
        if key in fields and fields[key] is not None:
            fields[key] = tuple(fields[key])
    if modality == "text" and "tokenizer" in fields:
        name = fields["tokenizer"]
        if (base / name).is_dir():
            name = f"{name.rstrip('/')}/tokenizer.json"
        fields["tokenizer"] = str(confined_file(base, name, kind="tokenizer", what="the tokenizer"))
    if modality == "numeric" and fields.get("vocabulary"):  # categorical ids of event sequences
        fields["vocabulary"] = str(confined_file(base, fields["vocabulary"], kind="manifest", what="the vocabulary"))
    return cls(**fields)


def _graph_output(model: Path) -> tuple[str, int | None]:
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
        out = graph.output[0]
    except Exception as exc:  # noqa: BLE001 - empty, truncated or not ONNX at all
        raise BackboneError(f"{model} is not a readable ONNX model ({type(exc).__name__}: {exc})".replace("\n", " "),
                            hint="pass the path of an ONNX graph saved with onnx.save or torch.onnx.export") from None
    dims = out.type.tensor_type.shape.dim
    last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
    if last is None:  # declared dynamic: shape inference may still know it
        try:
            inferred = onnx.shape_inference.infer_shapes(onnx.load(str(model), load_external_data=False)).graph
            dims = next(o for o in inferred.output if o.name == out.name).type.tensor_type.shape.dim
            last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
        except Exception:  # noqa: BLE001 - inference is a bonus; the sidecar's dim then decides
            last = None
    return out.name, last


def onnx_spec(ref: str) -> BackboneSpec:
    text = ref[len(PREFIX):].strip()
    if not text:
        raise ConfigError(f"'{ref}' names no ONNX file", hint="write onnx:<path to model.onnx>")
    model = Path(text).expanduser().resolve()
    side = sidecar_path(model)
    hint = f"put the graph at {model} and its preprocessing in {side} (see `headstart backbones` docs)"
    if not model.exists():
        raise ConfigError(f"ONNX file {model} does not exist", hint=hint)
    try:
        check_regular_file(model, kind="onnx", what="the ONNX graph")
        meta = json.loads(read_confined(side.parent, side.name, kind="sidecar", what="the preprocessing sidecar"))
    except ValueError as exc:
        raise ConfigError(f"cannot read the preprocessing sidecar {side}: {exc}", hint=hint) from None
    except HeadstartError as exc:
        if "does not exist" in exc.message:
            raise ConfigError(f"the preprocessing sidecar {side} does not exist", hint=hint) from None
        raise
    if not isinstance(meta, dict):
        raise ConfigError(f"{side} must hold a JSON object", hint=hint)
    for key, kind in _TOP.items():
        if meta.get(key) is not None and not _fits(meta[key], kind):
            raise ConfigError(f"{side}: field '{key}' must be a {kind.__name__}, got {meta[key]!r}", hint=hint)
    modality = meta.get("modality")
    if modality not in _PREP:
        raise ConfigError(f"{side}: modality must be text, image or numeric, got {modality!r}", hint=hint)
    try:
        prep = _preprocessing(modality, meta.get("preprocessing") or {}, side.parent, side)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{side}: bad preprocessing: {exc}", hint=hint) from None
    output, graph_dim = _graph_output(model)
    declared = meta.get("dim")
    if declared is not None and declared <= 0:
        raise ConfigError(f"{side}: \"dim\" must be positive, got {declared}", hint=hint)
    if declared is not None and graph_dim and declared != graph_dim:
        raise ConfigError(f"{side}: \"dim\" is {declared}, but the graph's output '{output}' has dimension {graph_dim}",
                          hint="set \"dim\" to the graph's output dimension, or leave it out (the graph's is static)")
    dim = int(declared or graph_dim or 0)
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
