"""A BERT encoder in plain PyTorch, built from a Hugging Face folder's own weights, without importing transformers.

Importing ``transformers.models.bert`` costs seconds on a CPU (it drags in ``torch._dynamo`` and more), and a
few-shot fine-tune is over in a few seconds: the trainable body does not need it. :func:`bert_text_encoder`
builds the same computation as ``text_encoder(BertModel.from_pretrained(folder, attn_implementation="eager"))``
(absolute positions, eager attention with the additive ``finfo.min`` mask, erf GELU, post-norm residual blocks,
LayerNorm eps from ``config.json``, dropout at the same places and in the same order), with the same parameter
names (``model.embeddings...``, ``model.encoder.layer.N...``, ``model.pooler.dense...``), so its state dict,
the block cache's hooks and the fine-tuned deltas are interchangeable with the Hugging Face module's.
It returns ``None`` for a folder it does not cover (another architecture, relative positions, a decoder,
another activation, no safetensors file): the caller builds the Hugging Face module then.

The backbone plugins offer it as the plain twin of their ``build_torch`` (``headstart.sdk.TorchBuilder``: the Hugging
Face module stays the reference the base export is traced from); finetuners get it through
``headstart.sdk.trainable_module``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

WEIGHTS = "model.safetensors"
#: weight-name prefixes of task checkpoints (``BertForX`` saves the encoder under ``bert.``)
PREFIXES = ("bert.",)


def supported(config: dict[str, Any]) -> bool:
    """Whether :func:`bert_text_encoder` computes exactly what Hugging Face's BertModel does for ``config``."""
    return (config.get("model_type") == "bert" and config.get("position_embedding_type", "absolute") == "absolute"
            and config.get("hidden_act", "gelu") == "gelu" and not config.get("is_decoder", False)
            and not config.get("add_cross_attention", False)
            and config.get("hidden_size", 0) % max(config.get("num_attention_heads", 1), 1) == 0)


def read_config(folder: str | Path) -> dict[str, Any] | None:
    """The folder's config.json when it has a safetensors file too, else None."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if (folder / WEIGHTS).is_file() and isinstance(config, dict) else None


def bert_text_encoder(folder: str | Path, pooling: str, normalize: bool,
                      inputs: tuple[str, ...] = ("input_ids", "attention_mask")) -> Any | None:
    """The plain-PyTorch BERT text encoder of ``folder`` (weights loaded, eval mode), or None when not covered.
    ``token_type_ids`` is read only when ``inputs`` names it (as ``text_encoder`` does)."""
    config = read_config(folder)
    if config is None or not supported(config) or pooling not in ("mean", "cls"):
        return None
    import torch
    from safetensors.torch import load_file

    # parameters are created uninitialised (no time spent, nothing drawn from the RNG); the file's tensors are assigned
    module = _encoder_class()(config, pooling, normalize, "token_type_ids" in inputs)
    state = {}
    for name, value in load_file(str(Path(folder) / WEIGHTS)).items():
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        state[f"model.{name}"] = value
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith("model.pooler."))
    if missing or any(state[k].shape != own[k].shape for k in own if k in state):
        return None  # not the layout this module reads: the Hugging Face module is built instead
    # a checkpoint without a pooler: zeros (it is not part of the pooled embedding)
    loaded = {k: state[k].float() if k in state else torch.zeros(own[k].shape) for k in own}
    module.load_state_dict(loaded, strict=True, assign=True)
    return module.eval()


def _encoder_class() -> type:
    """The module classes, defined on first use (torch is imported only then)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    from torch import nn
    from torch.nn import functional as F

    def empty(*shape: int) -> Any:
        return nn.Parameter(torch.empty(*shape))

    # leaf modules with nn.Linear / nn.Embedding / nn.LayerNorm's parameter names and computation, without their
    # random initialisation (the weights are loaded right after; on the meta device torch would import dynamo)
    class Linear(nn.Module):
        def __init__(self, width: int, out: int) -> None:
            super().__init__()
            self.weight, self.bias = empty(out, width), empty(out)

        def forward(self, x: Any) -> Any:
            return F.linear(x, self.weight, self.bias)

    class Embedding(nn.Module):
        def __init__(self, rows: int, width: int) -> None:
            super().__init__()
            self.weight = empty(rows, width)

        def forward(self, ids: Any) -> Any:
            return F.embedding(ids, self.weight)

    class LayerNorm(nn.Module):
        def __init__(self, width: int, eps: float) -> None:
            super().__init__()
            self.weight, self.bias, self.eps = empty(width), empty(width), eps

        def forward(self, x: Any) -> Any:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    class Embeddings(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            hidden = c["hidden_size"]
            self.word_embeddings = Embedding(c["vocab_size"], hidden)
            self.position_embeddings = Embedding(c["max_position_embeddings"], hidden)
            self.token_type_embeddings = Embedding(c.get("type_vocab_size", 2), hidden)
            self.LayerNorm = LayerNorm(hidden, c.get("layer_norm_eps", 1e-12))
            self.dropout = nn.Dropout(c.get("hidden_dropout_prob", 0.1))

        def forward(self, input_ids: Any, token_type_ids: Any = None) -> Any:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
            embeddings = embeddings + self.position_embeddings(positions)
            return self.dropout(self.LayerNorm(embeddings))

    class SelfAttention(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            hidden = c["hidden_size"]
            self.heads, self.size = c["num_attention_heads"], hidden // c["num_attention_heads"]
            self.query, self.key, self.value = (Linear(hidden, hidden) for _ in range(3))
            self.dropout = nn.Dropout(c.get("attention_probs_dropout_prob", 0.1))

        def forward(self, hidden: Any, bias: Any) -> Any:
            b = hidden.shape[0]

            def split(x: Any) -> Any:
                return x.view(b, -1, self.heads, self.size).transpose(1, 2)

            q, k, v = split(self.query(hidden)), split(self.key(hidden)), split(self.value(hidden))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.size) + bias
            probs = self.dropout(F.softmax(scores, dim=-1))
            context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
            return context.view(*context.shape[:-2], self.heads * self.size)

    class Residual(nn.Module):  # dense -> dropout -> LayerNorm(x + input): BertSelfOutput and BertOutput
        def __init__(self, c: dict[str, Any], width: int) -> None:
            super().__init__()
            self.dense = Linear(width, c["hidden_size"])
            self.LayerNorm = LayerNorm(c["hidden_size"], c.get("layer_norm_eps", 1e-12))
            self.dropout = nn.Dropout(c.get("hidden_dropout_prob", 0.1))

        def forward(self, x: Any, residual: Any) -> Any:
            return self.LayerNorm(self.dropout(self.dense(x)) + residual)

    class Attention(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            self.self = SelfAttention(c)
            self.output = Residual(c, c["hidden_size"])

        def forward(self, hidden: Any, bias: Any) -> Any:
            return self.output(self.self(hidden, bias), hidden)

    class Intermediate(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            self.dense = Linear(c["hidden_size"], c["intermediate_size"])

        def forward(self, x: Any) -> Any:
            return F.gelu(self.dense(x))  # erf GELU, Hugging Face's "gelu"

    class Layer(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            self.attention = Attention(c)
            self.intermediate = Intermediate(c)
            self.output = Residual(c, c["intermediate_size"])

        def forward(self, hidden: Any, bias: Any) -> Any:
            attended = self.attention(hidden, bias)
            return self.output(self.intermediate(attended), attended)

    class Encoder(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            self.layer = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))

    class Pooler(nn.Module):  # unused by the pooled embedding; kept so the state dict matches Hugging Face's
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            self.dense = Linear(c["hidden_size"], c["hidden_size"])

    class Bert(nn.Module):
        def __init__(self, c: dict[str, Any]) -> None:
            super().__init__()
            self.embeddings = Embeddings(c)
            self.encoder = Encoder(c)
            self.pooler = Pooler(c)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            hidden = self.embeddings(input_ids, token_type_ids)
            dtype = hidden.dtype
            bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
            for layer in self.encoder.layer:
                hidden = layer(hidden, bias)
            return hidden

    class BertTextEncoder(nn.Module):
        """Keyword inputs in, one pooled (L2-normalised) vector per text out, like ``text_encoder``."""

        def __init__(self, c: dict[str, Any], pooling: str, normalize: bool, token_types: bool) -> None:
            super().__init__()
            self.model = Bert(c)
            self.pooling, self.normalize, self.token_types = pooling, normalize, token_types

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            hidden = self.model(input_ids, attention_mask, token_type_ids if self.token_types else None)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled

    _CLASS = BertTextEncoder
    return _CLASS


_CLASS: type | None = None
