"""``hf:<model id or local folder>[?pooling=mean|cls&normalize=true|false&max_length=N]``: Hugging Face encoders.

Time-series encoders (PatchTST) embed event sequences: see :mod:`.hf_sequence`. Text encoders (BERT, RoBERTa,
DistilBERT, ... with a fast tokenizer, ``tokenizer.json``) and ViT-style image encoders (a
``preprocessor_config.json`` gives the input size and normalisation). The graph is exported by optimum's exporter
(its per-architecture configs and dynamic axes; eager attention, so onnxruntime can fuse it), which stops at
``last_hidden_state``; the chosen pooling and normalisation are appended to that graph
(:func:`~headstart.sdk.append_pooling`), and headstart's parity gate compares the result with the same model pooled
in PyTorch (optimum's own validation only warns). A hub id is fetched with ``huggingface_hub.snapshot_download``
(which honours ``HF_HUB_OFFLINE`` and its cache) when the spec is resolved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from headstart.sdk import (BackboneError, BackboneSpec, ConfigError, ImagePreprocessing, TextPreprocessing,
                           append_pooling, hookimpl, TorchBuilder)

from .bert_body import bert_text_encoder
from .bert_numpy import bert_numpy_encoder
from .hf_sequence import is_sequence_model, sequence_spec

PREFIX = "hf:"
#: Architectures whose position ids start after the padding index (RoBERTa's 514 positions hold 512 tokens).
POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "roberta-prelayernorm"}


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


def _build(folder: str, pooling: str, normalize: bool, inputs: tuple[str, ...], modality: str) -> Any:
    """The PyTorch reference: the model with the same pooling and normalisation as the exported graph."""
    from transformers import AutoModel

    from headstart.sdk import vision_transformer_encoder, text_encoder

    model = AutoModel.from_pretrained(folder, attn_implementation="eager")
    if modality == "image":
        return vision_transformer_encoder(model, pooling, normalize)
    return text_encoder(model, pooling, normalize, inputs)


def _export(folder: str, pooling: str, normalize: bool, modality: str, output_name: str, out: Path) -> None:
    """optimum's exporter (feature extraction, token states), then pooling + normalisation appended.

    The model is loaded here with eager attention (onnxruntime fuses that pattern; SDPA it does not)."""
    import tempfile

    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with tempfile.TemporaryDirectory(prefix="headstart-optimum-") as tmp:
        onnx_export_from_model(model, tmp, task="feature-extraction", opset=17, do_validation=False,
                               no_post_process=True)
        append_pooling(Path(tmp) / "model.onnx", out, pooling=pooling, normalize=normalize, output_name=output_name,
                       mask="attention_mask" if modality == "text" else None)


def _image_preprocessing(folder: Path, ref: str) -> ImagePreprocessing:
    try:
        processor = json.loads((folder / "preprocessor_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} has no readable preprocessor_config.json: {exc}",
                          hint="save the image processor with save_pretrained beside the model") from None
    size = processor.get("size", {})
    side = int(size.get("height") or size.get("shortest_edge") or 224) if isinstance(size, dict) else int(size)
    mean = tuple(float(v) for v in processor.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in processor.get("image_std", (0.5, 0.5, 0.5)))
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"{ref}: image_mean/image_std must have 3 values", hint="an RGB image processor")
    resample = {2: "bilinear", 3: "bicubic"}.get(int(processor.get("resample", 2)), "bilinear")
    return ImagePreprocessing(size=side, resize=side, interpolation=resample, mean=mean, std=std,  # type: ignore[arg-type]
                              input_name="pixel_values")


def hf_spec(ref: str) -> BackboneSpec:
    target, options = parse_ref(ref)
    folder = _folder(target)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} has no readable config.json: {exc}", hint="save the model with save_pretrained") from None
    if is_sequence_model(config):
        return sequence_spec(ref, target, folder, config, options)
    modality = "image" if "num_channels" in config and "image_size" in config else "text"
    pooling = options.get("pooling", "cls" if modality == "image" else "mean")
    if pooling not in ("mean", "cls"):
        raise ConfigError(f"pooling '{pooling}' is not supported for {ref}", hint="use pooling=mean or pooling=cls")
    normalize = options.get("normalize", "true").lower() not in ("0", "false", "no")
    if modality == "text":
        if not (folder / "tokenizer.json").is_file():
            raise ConfigError(f"{folder} has no tokenizer.json (a fast tokenizer)",
                              hint="save it with AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder)")
        limit = int(config.get("max_position_embeddings", 512))
        if config.get("model_type") in POSITIONS_AFTER_PADDING:  # positions start at pad_token_id + 1
            limit -= int(config.get("pad_token_id") or 0) + 1
        max_length = min(int(options.get("max_length", min(limit, 512))), limit)
        # optimum's RoBERTa-family configs drop token_type_ids (one segment type), whatever type_vocab_size says
        segments = config.get("type_vocab_size", 0) > 1 and config.get("model_type") not in POSITIONS_AFTER_PADDING
        inputs = ("input_ids", "attention_mask") + (("token_type_ids",) if segments else ())
        preprocessing: Any = TextPreprocessing(tokenizer=str(folder), max_length=max_length, inputs=inputs)
    else:
        inputs = ("pixel_values",)
        preprocessing = _image_preprocessing(folder, ref)
    dim = int(config.get("hidden_size") or config.get("d_model") or config.get("dim") or 0)
    weights = tuple(str(p) for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    output_name = "embedding"
    return BackboneSpec(
        name=ref,
        modality=modality,  # type: ignore[arg-type]
        source=f"Hugging Face {target}",
        preprocessing=preprocessing,
        dim=dim,
        pooling=pooling,  # type: ignore[arg-type]
        normalize=normalize,
        description=f"{config.get('model_type', 'transformer')} encoder from {target}, {pooling} pooling",
        weights=weights,
        # BERT text encoders also offer plain-PyTorch and numpy twins that fine-tunes train (no transformers import)
        build_torch=TorchBuilder(lambda: _build(str(folder), pooling, normalize, inputs, modality),
                                 lambda: bert_text_encoder(folder, pooling, normalize, inputs) if modality == "text"
                                 else None,
                                 lambda: bert_numpy_encoder(folder, pooling, normalize, inputs) if modality == "text"
                                 else None),
        export_onnx=lambda out: _export(str(folder), pooling, normalize, modality, output_name, out),
        output_name=output_name,
        extra=(("exporter", "optimum"),) + ((("graph_optimizer", "bert-layernorm"),) if modality == "text" else ()),
    )


@hookimpl
def resolve_backbone(ref):
    return hf_spec(ref) if isinstance(ref, str) and ref.startswith(PREFIX) else None
