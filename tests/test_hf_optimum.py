"""`hf:` backbones export through optimum's exporter with pooling appended, for several architectures built
from configs (BERT, RoBERTa, DistilBERT text; ViT images), each gated on parity against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart.engine.backbones.export import export
from headstart.engine.embed.pipeline import embed

WORDS = ["the", "a", "card", "payment", "refund", "late", "order", "ticket", "hello", "world", "is", "was"]


def _tokenizer(folder: Path) -> None:
    from tiny_tokenizer import save_word_tokenizer

    save_word_tokenizer(folder, WORDS)


def _text_model(kind: str, folder: Path) -> Path:
    import torch
    from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, RobertaConfig,
                              RobertaModel)

    torch.manual_seed(0)
    vocab = 5 + len(WORDS)
    config, cls = {
        "bert": (BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, pad_token_id=0), BertModel),
        "roberta": (RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=66, pad_token_id=0), RobertaModel),
        "distilbert": (DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                        max_position_embeddings=64, pad_token_id=0), DistilBertModel),
    }[kind]
    cls(config).save_pretrained(folder)
    _tokenizer(folder)
    return folder


def _vit(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5],
                      image_std=[0.5, 0.5, 0.5]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_text_architectures_export_through_optimum(kind: str, tmp_path: Path, headstart_home: Path):
    folder = _text_model(kind, tmp_path / kind)
    exported = export(f"hf:{folder}")
    assert exported.manifest["graph"]["exporter"] == "optimum"
    assert exported.parity["reference"] == "pytorch" and exported.parity["min_cosine"] >= 0.9999
    cls = export(f"hf:{folder}?pooling=cls&normalize=false")
    assert cls.fingerprint != exported.fingerprint and cls.parity["min_cosine"] >= 0.9999
    source = tmp_path / "texts.csv"
    source.write_text("text\nhello world\nthe card payment was late\nlate\nrefund the order ticket\n")
    result = embed(str(source), backbone=f"hf:{folder}", progress=False)
    assert result.vectors.shape == (4, 32)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)


def test_vit_exports_through_optimum_and_embeds_images(tmp_path: Path, headstart_home: Path):
    from PIL import Image

    folder = _vit(tmp_path / "vit")
    exported = export(f"hf:{folder}")
    assert exported.spec.modality == "image" and exported.manifest["graph"]["exporter"] == "optimum"
    assert exported.parity["min_cosine"] >= 0.9999
    assert exported.spec.preprocessing.size == 32
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    result = embed(str(images), backbone=f"hf:{folder}", progress=False)
    assert result.vectors.shape == (3, 32) and np.isfinite(result.vectors).all()


def test_append_pooling_matches_numpy(tmp_path: Path):
    """The appended masked mean + L2 norm is checked on its own against numpy."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from headstart.sdk import append_pooling

    hidden = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "t", 4])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["last_hidden_state"])], "g", [x, mask], [hidden])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "g.onnx")
    append_pooling(tmp_path / "g.onnx", tmp_path / "p.onnx", pooling="mean", normalize=True)
    rng = np.random.default_rng(0)
    states = rng.standard_normal((2, 5, 4)).astype(np.float32)
    m = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int64)
    out = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": states, "attention_mask": m})[0]
    expected = (states * m[..., None]).sum(1) / m.sum(1, keepdims=True)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(out, expected, atol=1e-6)
