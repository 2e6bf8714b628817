"""Issue 16, the fixed costs of a contrastive fine-tune that were cut: no frozen head is fitted before it
(its baseline is the cross-validation's epoch 0, the frozen body), the source is not embedded again with
the tuned export (the model is scored by its held-out folds; the parity gate checked the export against
the tuned model the head was fitted on), and the tuned graph is spliced without copying the whole graph.

The model must still predict in a fresh process without torch, the same labels as in this process; a
labelled set whose smallest class has one item (no folds) falls back to the frozen head and the ONNX
validation score; a splice whose spans do not fit the graph writes nothing.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from finetune_data import (blind_task, csv_labels, identity_graph, onnx_initializers, predict_in_fresh_process,
                           tiny_bert_blind)

# the blind task needs the embedding rows to move, so every block trains (tests/test_fewshot.py)
OPTS = dict(unfreeze="all", epochs=6, lr=3e-3, patience=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot-fast")
    return {"bert": tiny_bert_blind(root / "bert"), "train": blind_task(root / "train.csv", 48, 30),
            "test": blind_task(root / "test.csv", 40, 31), "root": root, "home": root / "home"}


def test_no_frozen_head_fit_and_no_second_embedding_yet_the_model_predicts_in_a_fresh_process(
        data: dict[str, Path], env_home: Path) -> None:
    from headstart.engine.backbones.export import export
    from headstart.engine.train.api import evaluate, predict
    from headstart.engine.train.finetune import FinetuneOptions, finetune

    result = finetune(str(data["train"]), f"hf:{data['bert']}", "linear", out=data["root"] / "tuned",
                      options=FinetuneOptions.for_objective("contrastive", **OPTS))
    summary = result.summary()
    assert summary["best_epoch"] >= 1
    # the frozen baseline is the held-out score of the frozen body (epoch 0 of the 2-fold curve), on all 48 items
    assert summary["frozen"]["split"] == "cross-validation (frozen body, class centroids)"
    assert summary["frozen"]["n"] == 48 and summary["finetuned"]["split"] == "cross-validation"
    assert summary["frozen"]["accuracy"] == pytest.approx(summary["history"][0]["val_accuracy"], abs=1e-6)
    assert summary["improvement"] > 0.2  # frozen features are blind to the keyword, the tuned body is not
    # the model's backbone record is the tuned export's own, although the source was not embedded with it
    manifest = result.model.manifest
    tuned = export(manifest["backbone"]["name"], "fp32")
    assert manifest["backbone"]["fingerprint"] == tuned.fingerprint and manifest["backbone"]["dim"] == tuned.dim
    assert not (env_home / "features" / tuned.fingerprint).exists()  # embedded once, with the base backbone
    fresh = blind_task(data["root"] / "fresh.csv", 40, 32)
    got = predict_in_fresh_process(result.path, fresh, env_home)
    truth = csv_labels(fresh)
    assert got["torch"] is False and np.mean(np.asarray(got["labels"]) == np.asarray(truth)) >= 0.7
    assert got["labels"] == list(predict(result.path, str(fresh)).labels)
    # the head was fitted on the tuned PyTorch embeddings; on the ONNX features it classifies held-out items
    assert evaluate(result.path, str(data["test"]))["accuracy"] >= 0.7


def test_a_class_with_one_item_has_no_folds_so_the_frozen_head_and_the_onnx_validation_score_are_used(
        data: dict[str, Path], env_home: Path) -> None:
    from headstart.engine.train.finetune import FinetuneOptions, finetune

    path = data["root"] / "lonely.csv"
    rows = list(csv.reader(data["train"].open()))
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([*rows, ["a lonely refund of the bank", "lonely"]])
    result = finetune(str(path), f"hf:{data['bert']}", "linear", out=data["root"] / "lonely",
                      options=FinetuneOptions.for_objective("contrastive", **{**OPTS, "epochs": 2}))
    summary = result.summary()
    assert summary["info"]["folds"] == 0 and "cv_metrics" not in summary["info"]
    assert summary["frozen"]["split"] == "validation" and summary["finetuned"]["split"] == "validation"
    fingerprint = result.model.manifest["backbone"]["fingerprint"]
    assert (env_home / "features" / fingerprint).is_dir()  # scored on the tuned export's own features


def test_a_splice_whose_spans_do_not_fit_the_graph_writes_nothing(tmp_path: Path) -> None:
    from headstart.plugins.finetune.graph_patch import graph_plan, raw_offsets, write_spliced

    rng = np.random.default_rng(1)
    base = {n: rng.normal(size=(4, 6)).astype(np.float32) for n in ("a", "b")}
    graph = identity_graph(tmp_path / "g.onnx", {"a_t": base["a"].T.copy(), "b_t": base["b"].T.copy()})
    plan = graph_plan(graph, base, {"a", "b"})
    offsets = raw_offsets(graph, plan)
    assert offsets is not None
    tuned = {n: v + 1.0 for n, v in base.items()}
    assert write_spliced(graph, plan, offsets, tuned, tmp_path / "ok.onnx")
    got = onnx_initializers(tmp_path / "ok.onnx")
    np.testing.assert_array_equal(got["a_t"], tuned["a"].T)
    np.testing.assert_array_equal(got["b_t"], tuned["b"].T)
    first, second = sorted(offsets, key=lambda n: offsets[n]["at"])
    past_end = {**offsets, second: {**offsets[second], "at": graph.stat().st_size - 4}}
    assert not write_spliced(graph, plan, past_end, tuned, tmp_path / "past_end.onnx")
    at, count = offsets[first]["at"] + 4, offsets[second]["bytes"]  # inside the first span, its bytes hashed
    overlapping = {**offsets, second: {**offsets[second], "at": at, "blake2b": hashlib.blake2b(
        graph.read_bytes()[at:at + count], digest_size=16).hexdigest()}}
    assert not write_spliced(graph, plan, overlapping, tuned, tmp_path / "overlap.onnx")
    assert not (tmp_path / "past_end.onnx").exists() and not (tmp_path / "overlap.onnx").exists()
