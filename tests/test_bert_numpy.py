"""The numpy BERT twin (plugins/backbones/bert_numpy.py) computes what the plain-PyTorch twin computes.

Embeddings (mean and CLS pooling, with and without L2 normalisation, token types, padding), and the gradients
of its hand-written backward pass against torch autograd: the top block alone on the cached output of the blocks
below, and every block with the stem, with dropout on (the torch twin's dropout modules replay the numpy masks).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _tiny_bert(folder: Path, seed: int = 0) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
                        hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("bert-numpy"))


INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _batch(rows: int = 6, length: int = 11, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, rows)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, 40, (rows, length)) * mask
    types = rng.integers(0, 2, (rows, length)) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _models(folder: Path, pooling: str = "mean", normalize: bool = True):
    from headstart.plugins.backbones.bert_body import bert_text_encoder
    from headstart.plugins.backbones.bert_numpy import bert_numpy_encoder

    return (bert_text_encoder(folder, pooling, normalize, INPUTS), bert_numpy_encoder(folder, pooling, normalize,
                                                                                      INPUTS))


def _torch(batch: dict[str, np.ndarray]) -> dict:
    return {k: torch.from_numpy(v) for k, v in batch.items()}


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("mean", False), ("cls", True)])
def test_the_numpy_twin_embeds_what_the_torch_twin_embeds(folder: Path, pooling: str, normalize: bool) -> None:
    module, twin = _models(folder, pooling, normalize)
    batch = _batch()
    with torch.inference_mode():
        expected = module(**_torch(batch)).numpy()
    got = twin(**batch)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)
    # the lower blocks' output, replayed, gives the same embeddings as running every block
    states = twin.prefix(batch, 2)
    np.testing.assert_allclose(twin.forward(batch, 2, states)[0], got, atol=1e-6)


def test_a_folder_the_numpy_twin_does_not_cover_gives_none(tmp_path: Path, folder: Path) -> None:
    import json
    import shutil

    from headstart.plugins.backbones.bert_numpy import bert_numpy_encoder

    other = tmp_path / "relative"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    assert bert_numpy_encoder(other, "mean", True) is None
    assert bert_numpy_encoder(folder, "max", True) is None  # a pooling it does not compute


class _Replay(torch.nn.Module):
    """Stands in for a torch dropout module: multiplies by the scale the numpy forward drew."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = None

    def forward(self, x):
        return x * self.scale


def _replay_masks(module, tape: dict, first: int) -> None:
    """Give ``module``'s dropout modules the numpy forward's masks (padded back to batch x length); those of the
    blocks below ``first`` drop nothing (the numpy twin runs them once, without dropout, and replays them)."""
    pack = tape["pack"]
    for owner in module.modules():
        for name, child in list(owner.named_children()):
            if isinstance(child, torch.nn.Dropout):
                setattr(owner, name, torch.nn.Identity())

    def padded(scale: np.ndarray):
        return torch.from_numpy(pack.pad(scale))

    model = module.model
    if first == 0:
        model.embeddings.dropout = _Replay()
        model.embeddings.dropout.scale = padded(tape["stem"][3])
    for entry in tape["layers"]:
        layer = model.encoder.layer[entry["i"]]
        for owner, name, scale in ((layer.attention.self, "dropout", torch.from_numpy(entry["attn_scale"])),
                                   (layer.attention.output, "dropout", padded(entry["out_scale"])),
                                   (layer.output, "dropout", padded(entry["down_scale"]))):
            setattr(owner, name, _Replay())
            getattr(owner, name).scale = scale


@pytest.mark.parametrize("first", [0, 3])
def test_the_backward_pass_is_autograds_with_dropout(folder: Path, first: int) -> None:
    """``first`` 0: every block and the stem train; 3: the top block alone, on the cached lower blocks."""
    module, twin = _models(folder)
    batch = _batch(rows=5, seed=2)
    states = twin.prefix(batch, first) if first else None
    emb, tape = twin.forward(batch, first, states, rng=np.random.default_rng(7), record=True)
    upstream = np.random.default_rng(3).standard_normal(emb.shape).astype(np.float32)
    grads = twin.backward(tape, upstream)

    _replay_masks(module, tape, first)
    module.train()
    trained = {n for b in range(first, twin.layers + 1) for n in twin.block_names(b)}
    params = dict(module.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in trained)
    expected = module(**_torch(batch))
    np.testing.assert_allclose(emb, expected.detach().numpy(), atol=2e-6, rtol=1e-5)
    (expected * torch.from_numpy(upstream)).sum().backward()
    assert set(grads) == trained
    largest = max(float(params[name].grad.abs().max()) for name in trained)
    for name in trained:
        want = params[name].grad.numpy()
        if name.endswith("attention.self.key.bias"):
            # zero in exact arithmetic (softmax is invariant to it): both sides must be rounding noise of the other
            # gradients' size; relative to their own largest entry (~1e-10) they mean nothing (it failed CI once)
            assert max(float(np.abs(grads[name]).max()), float(np.abs(want).max())) < 1e-7 * largest, name
            continue
        # relative to the tensor's largest gradient
        scale = max(float(np.abs(want).max()), 1e-6)
        assert float(np.abs(grads[name] - want).max()) / scale < 1e-4, name


def test_erf_and_gelu_are_within_float32_rounding() -> None:
    from headstart.plugins.backbones.bert_numpy import _gelu, erf

    x = np.linspace(-9, 9, 20200).astype(np.float32)
    exact = np.array([math.erf(v) for v in x.tolist()])
    assert np.abs(erf(x) - exact).max() < 6e-7
    strided = x.reshape(101, -1)[:, ::-1]  # any shape and strides
    gelu, cdf = _gelu(strided)
    expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in strided.ravel().tolist()])
    assert gelu.shape == strided.shape and cdf.shape == strided.shape
    assert np.abs(gelu.ravel() - expected).max() < 5e-6
