"""Issue 3 acceptance 4: tiny models built in the test (BERT from a config, CNN), the parity gate, unsafe files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.backbones.export import export, find_export
from headstart.engine.backbones.preprocess import make_preprocessor
from headstart.engine.backbones.probes import probe_images
from headstart.engine.backbones.resolve import resolve_backbone
from headstart.engine.backbones.runtime import Encoder
from headstart.engine.backbones.spec import BackboneSpec, ImagePreprocessing, Int8Recipe
from headstart.engine.errors import ExportParityError, IntegrityError, UnsafeModelError


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with random weights and a word-level fast tokenizer, saved like a hub folder."""
    import torch
    from transformers import BertConfig, BertModel

    from tiny_tokenizer import save_word_tokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = save_word_tokenizer(folder, "the a cat dog sat on mat is fraud card payment late refund".split())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def test_tiny_bert_from_config_exports_with_chosen_pooling(tiny_bert: Path, headstart_home: Path) -> None:
    mean = export(f"hf:{tiny_bert}")
    cls = export(f"hf:{tiny_bert}?pooling=cls&normalize=false")
    for e in (mean, cls):
        assert e.parity["min_cosine"] >= 0.9999 and e.parity["max_abs_diff"] <= 1e-4 and e.dim == 32
    assert mean.fingerprint != cls.fingerprint
    spec = resolve_backbone(f"hf:{tiny_bert}")
    pre = make_preprocessor(spec)
    out = Encoder(mean, device="cpu").run(pre.collate(pre.prepare_many(["the cat sat", "refund " * 100])))
    assert out.shape == (2, 32) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert pre.prepare_many(["refund " * 100])[0].ids.shape[0] == 64  # truncated at max_position_embeddings


def test_int8_recipe_falls_back_to_the_next_when_it_misses_the_gate(tiny_bert: Path, headstart_home: Path) -> None:
    import dataclasses

    spec = resolve_backbone(f"hf:{tiny_bert}")
    careful = Int8Recipe(fp32_nodes=(".",))  # every node stays fp32: parity is exact
    int8 = export(dataclasses.replace(spec, int8=Int8Recipe(fallback=careful)), "int8", min_cosine=0.9999999999)
    quant = int8.manifest["quantization"]
    assert [r["min_cosine"] < 0.9999999999 for r in quant["refused_recipes"]] == [True]
    assert quant["fp32_nodes"] and int8.parity["min_cosine"] >= 0.9999999999
    with pytest.raises(ExportParityError):  # without the fallback the same gate refuses the export
        export(dataclasses.replace(spec, int8=Int8Recipe()), "int8", min_cosine=0.9999999999)


def test_damaged_export_fails_the_embed_job_from_the_session_thread(tiny_bert: Path, headstart_home: Path,
                                                                    tmp_path: Path) -> None:
    from headstart.engine.embed.pipeline import embed

    exported = export(f"hf:{tiny_bert}")
    data = bytearray(exported.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    exported.path.write_bytes(bytes(data))
    source = tmp_path / "t.csv"
    source.write_text("text\nthe cat sat\na dog\n")
    with pytest.raises(IntegrityError):  # raised where the session is first used, not lost in its thread
        embed(source, backbone=f"hf:{tiny_bert}", progress=False)


def _tiny_cnn(diverge: bool = False):
    import torch

    from headstart.engine.backbones.torch_modules import image_encoder

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8),
                                            torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            if diverge and torch.onnx.is_in_onnx_export():  # an op that the exported graph gets wrong
                y = y * 1.5 + torch.linspace(0, 1, y.shape[1]).view(1, -1, 1, 1)
            return y

    return image_encoder(Net(), normalize=True)


def _cnn_spec(name: str, diverge: bool = False) -> BackboneSpec:
    return BackboneSpec(name=name, modality="image", source="test", dim=16, build_torch=lambda: _tiny_cnn(diverge),
                        preprocessing=ImagePreprocessing(size=32, resize=36))


def test_tiny_cnn_exports_and_static_int8_is_calibrated(headstart_home: Path) -> None:
    fp32 = export(_cnn_spec("tiny-cnn"))
    assert fp32.parity["min_cosine"] >= 0.9999 and fp32.parity["items"] >= 16
    images = probe_images() + [b"<html>not an image</html>", b"\xff\xd8\xff\xe0 truncated jpeg"]  # bad items skipped
    images = images[-1:] + images[:-1]  # one bad item lands in the held-out fifth
    int8 = export(_cnn_spec("tiny-cnn"), "int8", calibration=images, min_cosine=0.95)
    assert int8.fingerprint != fp32.fingerprint and int8.manifest["quantization"]["calibration_items"] == len(images)
    assert int8.parity["min_cosine"] >= 0.95 and int8.parity["items_from"] == "held-out calibration items"
    assert int8.parity["items"] == len(images[::5]) - 1 and "min_cosine" in int8.manifest["probe_parity"]
    assert find_export(_cnn_spec("tiny-cnn"), "int8").fingerprint == int8.fingerprint
    other = export(_cnn_spec("tiny-cnn"), "int8", calibration=images[:6], min_cosine=0.9)
    assert other.fingerprint != int8.fingerprint  # calibration data is part of the identity


def test_diverging_export_fails_the_gate_and_leaves_no_entry(headstart_home: Path) -> None:
    spec = _cnn_spec("broken-cnn", diverge=True)
    with pytest.raises(ExportParityError, match="failed the parity gate"):
        export(spec)
    assert find_export(spec, "fp32") is None
    assert not list((headstart_home / "exports").rglob("manifest.json"))


def _numeric_model(path: Path, external: str | None = None) -> None:
    """x (B, T, 4) + mask (B, T) -> masked mean over T of x @ W: a tiny sequence encoder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "one"], ["s"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "one"], ["n"], keepdims=0),
        helper.make_node("Div", ["s", "n"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4]),
                       helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", 6])],
        [w, numpy_helper.from_array(np.array([2], dtype=np.int64), "axes"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    if external:
        w_proto = model.graph.initializer[0]
        w_proto.data_location = TensorProto.EXTERNAL
        w_proto.ClearField("raw_data")
        w_proto.external_data.add(key="location", value=external)
    onnx.save(model, str(path))
    path.with_suffix(".headstart.json").write_text(json.dumps({
        "modality": "numeric", "description": "transaction history encoder",
        "preprocessing": {"input_name": "x", "shape": [None, 4], "dtype": "float32", "mask_name": "mask"}}))


def test_bring_your_own_numeric_onnx(tmp_path: Path, headstart_home: Path) -> None:
    model = tmp_path / "seq.onnx"
    _numeric_model(model)
    exported = export(f"onnx:{model}")
    assert exported.dim == 6 and exported.parity["min_cosine"] >= 0.9999
    assert exported.parity["reference"].startswith("onnx fp32")
    spec = resolve_backbone(f"onnx:{model}")
    pre = make_preprocessor(spec)
    arrays = [np.ones((3, 4), np.float32), np.full((7, 4), 2.0, np.float32), np.zeros((2, 5), np.float32)]
    items = pre.prepare_many(arrays)
    assert isinstance(items[2], Exception) and "shape" in str(items[2])
    out = Encoder(exported, device="cpu").run(pre.collate(items[:2]))
    assert np.allclose(out[1], 2 * out[0], atol=1e-5)  # padding is masked out


def test_external_data_path_escaping_the_folder_is_refused(tmp_path: Path, headstart_home: Path) -> None:
    outside = tmp_path / "x"
    outside.write_bytes(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    model = folder / "seq.onnx"
    _numeric_model(model, external="../x")
    with pytest.raises(UnsafeModelError, match="outside the model folder"):
        export(f"onnx:{model}")
    _numeric_model(model, external=str(outside))
    with pytest.raises(UnsafeModelError, match="absolute"):
        export(f"onnx:{model}")


def test_external_data_in_a_cached_entry_is_checked_by_the_encoder(tmp_path: Path, headstart_home: Path) -> None:
    import onnx

    folder = tmp_path / "ok"
    folder.mkdir()
    model = folder / "seq.onnx"
    _numeric_model(model)
    proto = onnx.load(str(model))
    onnx.save(proto, str(model), save_as_external_data=True, location="seq.data", size_threshold=64)
    exported = export(f"onnx:{model}")
    assert "seq.data" in exported.manifest["files"]
    Encoder(exported, device="cpu")
    (exported.path.parent / "seq.data").unlink()
    (exported.path.parent / "seq.data").symlink_to(folder / "seq.data")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        Encoder(exported, device="cpu")


def test_the_manifest_opset_is_read_without_parsing_the_graph(tiny_bert: Path, headstart_home: Path,
                                                              tmp_path: Path) -> None:
    """The opset comes from a scan of the ModelProto's top-level fields (the graph's weights are skipped): it
    must agree with onnx's own parse, whatever the order and domains of the opset entries."""
    import onnx
    from onnx import helper

    from headstart.engine.backbones.export import _opset

    exported = export(f"hf:{tiny_bert}", "fp32")
    parsed = onnx.load(str(exported.path), load_external_data=False)
    assert exported.manifest["opset"] == _opset(exported.path) == next(
        o.version for o in parsed.opset_import if o.domain in ("", "ai.onnx"))
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
                              initializer=[helper.make_tensor("w", onnx.TensorProto.FLOAT, [300],
                                                              np.arange(300, dtype=np.float32))])
    for opsets, expected in ((["com.microsoft:1", ":17"], 17), (["ai.onnx:13", "ai.onnx.ml:3"], 13),
                             (["ai.onnx.ml:3"], None)):
        imports = [helper.make_opsetid(*(lambda d, v: (d, int(v)))(*o.split(":"))) for o in opsets]
        model = helper.make_model(graph, opset_imports=imports, producer_name="test", doc_string="d" * 500)
        path = tmp_path / f"m{len(opsets)}-{expected}.onnx"
        onnx.save(model, str(path))
        assert _opset(path) == expected
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(path.read_bytes()[:-7] + b"\x07\x07\x07\x07\x07\x07\x07")  # the scan fails: onnx decides
    with pytest.raises(Exception):
        _opset(damaged)
