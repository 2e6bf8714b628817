"""``hf:<model id or local folder>[?pooling=mean|cls&normalize=true|false&max_length=N]``: any Hugging Face text encoder.

The model is loaded with ``transformers.AutoModel`` (eager attention, so onnxruntime can
fuse it) and exported through ``torch.onnx`` with the chosen pooling and normalisation
inside the graph -- optimum's exporter stops at ``last_hidden_state``. The folder (or the
hub snapshot) must hold a fast tokenizer (``tokenizer.json``). A hub id is fetched with
``huggingface_hub.snapshot_download`` (which honours ``HF_HUB_OFFLINE`` and its cache)
when the spec is resolved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from headstart import hookimpl
from headstart.engine.backbones.spec import BackboneSpec, TextPreprocessing
from headstart.engine.errors import BackboneError, ConfigError

PREFIX = "hf:"


def parse_ref(ref: str) -> tuple[str, dict[str, str]]:
    """``hf:path?k=v&...`` -> (path or id, options)."""
    body = ref[len(PREFIX):]
    target, _, query = body.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"pooling", "normalize", "max_length"}
    if not target or unknown:
        raise ConfigError(f"bad backbone reference '{ref}'" + (f": unknown options {sorted(unknown)}" if unknown else ""),
                          hint="use hf:<model id or folder>?pooling=mean|cls&normalize=true|false&max_length=N")
    return target, options


def _folder(target: str) -> Path:
    path = Path(target).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or target.startswith((".", "/", "~")):
        raise ConfigError(f"hf backbone folder '{target}' does not exist or is not a folder",
                          hint="give a folder saved with save_pretrained, or a Hugging Face model id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(target, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated repo, ...
        raise BackboneError(f"cannot fetch Hugging Face model '{target}': {type(exc).__name__}: {exc}",
                            hint="check the id and network access, or download it and pass hf:<local folder>") from exc


def _build(folder: str, pooling: str, normalize: bool, inputs: tuple[str, ...]) -> Any:
    from transformers import AutoModel

    from headstart.engine.backbones.torch_modules import text_encoder

    model = AutoModel.from_pretrained(folder, attn_implementation="eager")
    return text_encoder(model, pooling, normalize, inputs)


def hf_spec(ref: str) -> BackboneSpec:
    target, options = parse_ref(ref)
    folder = _folder(target)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} has no readable config.json: {exc}", hint="save the model with save_pretrained") from None
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{folder} has no tokenizer.json (a fast tokenizer)",
                          hint="save it with AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder)")
    pooling = options.get("pooling", "mean")
    if pooling not in ("mean", "cls"):
        raise ConfigError(f"pooling '{pooling}' is not supported for {ref}", hint="use pooling=mean or pooling=cls")
    normalize = options.get("normalize", "true").lower() not in ("0", "false", "no")
    limit = int(config.get("max_position_embeddings", 512))
    max_length = min(int(options.get("max_length", min(limit, 512))), limit)
    inputs = ("input_ids", "attention_mask") + (("token_type_ids",) if config.get("type_vocab_size", 0) > 1 else ())
    dim = int(config.get("hidden_size") or config.get("d_model") or 0)
    weights = tuple(str(p) for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    return BackboneSpec(
        name=ref,
        modality="text",
        source=f"Hugging Face {target}",
        preprocessing=TextPreprocessing(tokenizer=str(folder), max_length=max_length, inputs=inputs),
        dim=dim,
        pooling=pooling,  # type: ignore[arg-type]
        normalize=normalize,
        description=f"{config.get('model_type', 'transformer')} encoder from {target}, {pooling} pooling",
        weights=weights,
        build_torch=lambda: _build(str(folder), pooling, normalize, inputs),
        extra=(("graph_optimizer", "bert-layernorm"),),
    )


@hookimpl
def resolve_backbone(ref):
    return hf_spec(ref) if isinstance(ref, str) and ref.startswith(PREFIX) else None
