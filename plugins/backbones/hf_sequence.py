"""``hf:<folder>`` for transformers time-series encoders (PatchTST): event sequences in, one vector per item out.

The graph takes the events reader's items as they are batched: ``x`` (batch, steps, channels) float32, padded
at the end, and ``mask`` (batch, steps) int64. In the graph each item's last ``context_length`` real steps are
right-aligned into the model's fixed window (steps before the item's first event are zeros, marked unobserved
in ``past_observed_mask``, so the model's scaler ignores them), the model runs, and its patch states are
mean-pooled, each patch weighted by its share of real steps, to one ``d_model`` vector (optionally L2
normalised). An item alone and the same item padded in a batch give the model the same window, which the export
gate checks.

Export: optimum's exporter has no PatchTST config in this version, and ``torch.onnx`` (TorchScript) traces
``Tensor.unfold`` in PatchTST's patchifier with its output axes in the wrong order (onnxruntime then refuses the
graph: ``ShapeInferenceError: Incompatible dimensions`` at ``positional_encoder/Add``). The export therefore
replaces the patchifier's ``forward``, on the exported copy only, by the same patches taken with a constant
index (a Gather); the PyTorch reference of the parity gate is the unmodified model, so the gate checks the
replacement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.sdk import BackboneSpec, ConfigError, NumericPreprocessing

#: model_type -> the argument the model takes its observed-values mask as
SEQUENCE_MODELS = {"patchtst": "past_observed_mask"}


def is_sequence_model(config: dict[str, Any]) -> bool:
    return config.get("model_type") in SEQUENCE_MODELS


def _patch_index(patchifier: Any) -> Any:
    """(num_patches, patch_length) positions in the model's window that each patch covers."""
    import torch

    start, stride, length = patchifier.sequence_start, patchifier.patch_stride, patchifier.patch_length
    return start + torch.arange(patchifier.num_patches).unsqueeze(1) * stride + torch.arange(length).unsqueeze(0)


def _gather_patches(self: Any, past_values: Any) -> Any:
    """PatchTSTPatchify.forward without ``Tensor.unfold``: (batch, channels, patches, patch_length)."""
    index = _patch_index(self)
    patches = past_values[:, index.reshape(-1), :]  # (batch, patches * patch_length, channels)
    patches = patches.reshape(past_values.shape[0], index.shape[0], index.shape[1], past_values.shape[2])
    return patches.permute(0, 3, 1, 2).contiguous()


def build_sequence_encoder(folder: str, normalize: bool, exportable: bool = False) -> Any:
    """The model in its item-to-vector wrapper (``forward(x, mask)``); ``exportable`` swaps the patchifier."""
    import types

    import torch
    from torch import nn
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    mask_argument = SEQUENCE_MODELS[model.config.model_type]
    if exportable:
        model.patchifier.forward = types.MethodType(_gather_patches, model.patchifier)
    context = int(model.config.context_length)

    class SequenceEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("patch_index", _patch_index(model.patchifier), persistent=False)

        def forward(self, x: Any, mask: Any) -> Any:
            lengths = mask.to(torch.int64).sum(dim=1, keepdim=True)  # (batch, 1)
            source = lengths - context + torch.arange(context, device=x.device).unsqueeze(0)  # (batch, context)
            valid = source >= 0
            index = source.clamp(min=0).unsqueeze(-1).expand(-1, -1, x.shape[2])
            observed = valid.unsqueeze(-1).to(x.dtype).expand(-1, -1, x.shape[2])
            window = torch.gather(x, 1, index) * observed
            hidden = self.model(past_values=window, **{mask_argument: observed}).last_hidden_state  # (b, c, p, d)
            weight = valid.to(x.dtype)[:, self.patch_index.reshape(-1)].reshape(x.shape[0], *self.patch_index.shape)
            weight = weight.mean(dim=2)  # (batch, patches): the share of real steps in each patch
            total = weight.sum(dim=1, keepdim=True) * x.shape[2]
            pooled = (hidden * weight[:, None, :, None]).sum(dim=(1, 2)) / total
            return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    return SequenceEncoder().eval()


def _export(folder: str, normalize: bool, out: Path) -> None:
    import warnings

    import torch

    module = build_sequence_encoder(folder, normalize, exportable=True)
    channels = int(module.model.config.num_input_channels)
    x = torch.randn(2, 5, channels)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter
        torch.onnx.export(module, (x, mask), str(out), input_names=["x", "mask"], output_names=["embedding"],
                          dynamic_axes={"x": {0: "batch", 1: "steps"}, "mask": {0: "batch", 1: "steps"},
                                        "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False, do_constant_folding=True)


def sequence_spec(ref: str, target: str, folder: Path, config: dict[str, Any], options: dict[str, str]) -> BackboneSpec:
    """The spec of a transformers time-series encoder folder (see the module docstring)."""
    pooling = options.get("pooling", "mean")
    if pooling != "mean" or "max_length" in options:
        raise ConfigError(f"{ref}: sequence models take only pooling=mean and normalize=",
                          hint="drop pooling=cls / max_length (the window is the model's context_length)")
    normalize = options.get("normalize", "false").lower() not in ("0", "false", "no")
    channels, dim = int(config.get("num_input_channels") or 0), int(config.get("d_model") or 0)
    if channels < 1 or dim < 1:
        raise ConfigError(f"{folder}/config.json has no num_input_channels/d_model",
                          hint="save the model with save_pretrained from a PatchTSTConfig")
    prep = NumericPreprocessing(input_name="x", shape=(None, channels), dtype="float32", mask_name="mask")
    weights = tuple(str(p) for p in sorted(folder.iterdir())
                    if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    return BackboneSpec(
        name=ref, modality="numeric", source=f"Hugging Face {target}", preprocessing=prep, dim=dim,
        pooling="mean", normalize=normalize,
        description=f"{config['model_type']} sequence encoder from {target} ({channels} values per step, "
                    f"window {config.get('context_length')}), patch states mean-pooled",
        weights=weights,
        build_torch=lambda: build_sequence_encoder(str(folder), normalize),
        export_onnx=lambda out: _export(str(folder), normalize, out),
        extra=(("exporter", "torch.onnx (TorchScript), patchifier as a Gather"),
               ("context_length", str(config.get("context_length")))),
    )
