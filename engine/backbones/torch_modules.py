"""PyTorch wrappers that put pooling and L2 normalisation inside the exported graph.

Classes are built inside functions so importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any


def text_encoder(model: Any, pooling: str, normalize: bool, inputs: tuple[str, ...]) -> Any:
    """Wrap a Hugging Face encoder: keyword inputs in, one pooled (normalised) vector per text out.

    Inputs are passed by keyword (``BertModel.forward``'s positional order changed in
    transformers 5). ``pooling`` is ``mean`` (masked by ``attention_mask``) or ``cls``.
    """
    import torch

    if pooling not in ("mean", "cls"):
        raise ValueError(f"text pooling must be 'mean' or 'cls', got {pooling!r}")

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if "token_type_ids" in inputs:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.model(**kwargs).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if normalize else pooled

    return TextEncoder().eval()


def image_encoder(net: Any, normalize: bool, method: str = "forward") -> Any:
    """Wrap a CNN whose ``method`` returns an NCHW feature map: global average pooling, optional L2 norm."""
    import torch

    class ImageEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            pooled = getattr(self.net, method)(pixel_values).mean(dim=(2, 3))
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if normalize else pooled

    return ImageEncoder().eval()


def vision_transformer_encoder(model: Any, pooling: str, normalize: bool) -> Any:
    """Wrap a Hugging Face vision transformer (ViT-style, ``pixel_values`` in, token states out): the CLS token
    or the mean of all tokens, optional L2 norm."""
    import torch

    if pooling not in ("mean", "cls"):
        raise ValueError(f"image token pooling must be 'mean' or 'cls', got {pooling!r}")

    class VisionTransformerEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            hidden = self.model(pixel_values=pixel_values).last_hidden_state
            pooled = hidden[:, 0] if pooling == "cls" else hidden.mean(dim=1)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if normalize else pooled

    return VisionTransformerEncoder().eval()
