"""What the pretrained event encoder's embedding is: standardised on the pool, older layouts still load, and a
head on it separates the example's fraud better than the same head on a randomly initialised encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from example_transactions import generate_transactions

EVENTS = dict(group_by="account_id", order_by="ts", fields="log_amount,log_gap", categorical="category,country",
              window="48")


@pytest.fixture(scope="module")
def transactions(tmp_path_factory) -> Path:
    return generate_transactions(tmp_path_factory.mktemp("tx"), pool=600, labelled=300, test=300, fraud_rate=0.1)


@pytest.fixture(scope="module")
def encoders(transactions: Path, tmp_path_factory) -> dict[str, Path]:
    """The example's pool pretrained for 0 (random) and 4 epochs (tiny GRU)."""
    from headstart.engine.sequences.options import event_options
    from headstart.engine.sequences.pretrain import PretrainOptions, pretrain

    root = tmp_path_factory.mktemp("encoders")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(root / "home"))
        return {name: pretrain(str(transactions / "pool.parquet"), event_options(**EVENTS, need_vocabulary=False),
                               root / name, PretrainOptions(epochs=epochs, hidden=16)).folder
                for name, epochs in (("random", 0), ("pretrained", 4))}


def _embed(path: Path, folder: Path, home: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and labels of ``path`` embedded through the exported ONNX graph (one item per account)."""
    from headstart.engine.embed.items import ReaderOptions
    from headstart.engine.embed.pipeline import embed
    from headstart.engine.sequences.options import event_options

    events = event_options(**EVENTS, vocabulary=str(folder / "vocabulary.json"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(home))
        result = embed(str(path), f"onnx:{folder / 'encoder.onnx'}", progress=False,
                       reader_options=ReaderOptions(events=events, labelled=path.stem != "pool"))
    labels = np.asarray(result.labels) if result.labels is not None else np.asarray([])
    return np.asarray(result.vectors, dtype=np.float64), labels


def test_the_embedding_leaves_the_graph_standardised_with_the_pools_statistics(transactions: Path,
                                                                              encoders: dict[str, Path],
                                                                              tmp_path: Path):
    from headstart.engine.sequences.encoder import EncoderConfig
    from headstart.engine.sequences.pretrain import load_encoder

    _, config = load_encoder(encoders["pretrained"])
    assert config.recent == (4, 8) and config.dim == 6 * 4 + 1 and len(config.out_mean) == config.dim
    assert EncoderConfig.from_json(config.to_json()) == config
    X, _ = _embed(transactions / "pool.parquet", encoders["pretrained"], tmp_path / "home")
    assert X.shape == (600, config.dim)
    scaled = np.asarray(config.out_std) != 1.0  # values constant on the pool are left as they are
    assert scaled.sum() >= config.dim - 2
    np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(X.std(0, ddof=1)[scaled], 1.0, atol=1e-3)


def test_pretraining_leaves_the_callers_pytorch_thread_count_as_it_was(transactions: Path, tmp_path: Path):
    import torch

    from headstart.engine.sequences.options import event_options
    from headstart.engine.sequences.pretrain import PretrainOptions, pretrain

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HEADSTART_HOME", str(tmp_path / "home"))
            pretrain(str(transactions / "pool.parquet"), event_options(**EVENTS, need_vocabulary=False),
                     tmp_path / "bb", PretrainOptions(epochs=1, hidden=8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_encoder_saved_before_the_recent_stretches_and_statistics_keeps_its_layout():
    import torch

    from headstart.engine.sequences.encoder import EncoderConfig, build_encoder

    old = {"n_numeric": 2, "categorical_sizes": [5, 4], "hidden": 8, "embedding": 8, "mean": [0.0, 1.0],
           "std": [1.0, 2.0], "objective": "next-event"}  # an encoder.safetensors config written before them
    config = EncoderConfig.from_json(old)
    assert config.recent == (4,) and config.dim == 4 * 4 + 1 and config.out_mean == ()
    model = build_encoder(config).eval()
    x = torch.tensor([[[1.0, 2.0, 2.0, 3.0], [0.5, 1.0, 3.0, 2.0], [2.0, 0.0, 4.0, 2.0]]])
    mask = torch.ones(1, 3, dtype=torch.int64)
    with torch.no_grad():
        assert torch.equal(model(x, mask), model.raw_embedding(x, mask))  # not standardised
        assert model(x, mask).shape == (1, 17)


def test_a_linear_head_finds_more_fraud_on_the_pretrained_encoder_than_on_a_random_one(
        transactions: Path, encoders: dict[str, Path], tmp_path: Path):
    from sklearn.metrics import average_precision_score

    from headstart.engine.heads.resolve import build_head

    pr_auc = {}
    for name, folder in encoders.items():
        X, y = _embed(transactions / "labelled.parquet", folder, tmp_path / "home")
        X_test, y_test = _embed(transactions / "test.parquet", folder, tmp_path / "home")
        head, _ = build_head("linear")
        head.fit(X.astype(np.float32), y)
        scores = head.predict_proba(X_test.astype(np.float32))[:, list(head.classes_).index("fraud")]
        pr_auc[name] = average_precision_score(y_test == "fraud", scores)
    assert pr_auc["pretrained"] > pr_auc["random"] + 0.05, pr_auc
