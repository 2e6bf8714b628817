"""Issue 16: the contrastive few-shot finetuner (``headstart finetune --objective contrastive``).

It beats the frozen head where frozen features are blind (the tiny BERT of tests/finetune_data.py,
whose embeddings of ``fraud`` and ``payment`` are identical), its export passes the parity gate and
predicts in a fresh process without torch, kill -9 + ``--resume`` continues from the checkpoint and
ends where an uninterrupted run ends, the cached lower blocks give the same embeddings as the full
module, a resumed run keeps the training precision its checkpoint recorded, and escalation picks the
objective for a small labelled set.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune_data import blind_task, csv_labels, predict_in_fresh_process, tiny_bert_blind
from pause_control import env_with, run_and_kill_at

# the blind task needs the embedding rows to move, so the stem trains too (no split-point cache here)
OPTS = dict(unfreeze="all", epochs=6, lr=3e-3, patience=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot-data")
    return {"bert": tiny_bert_blind(root / "bert"), "train": blind_task(root / "train.csv", 48, 10),
            "test": blind_task(root / "test.csv", 80, 11), "root": root, "home": root / "home"}


@pytest.fixture(scope="module")
def tuned(data: dict[str, Path]) -> dict:
    """The frozen linear head and the contrastive fine-tune of the same 48 items, both scored on a held-out file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(data["home"]))
        from headstart.engine.plugins import set_engine
        from headstart.engine.train.api import evaluate, train
        from headstart.engine.train.finetune import FinetuneOptions, finetune

        set_engine(None)
        backbone = f"hf:{data['bert']}"
        train(str(data["train"]), "linear", backbone=backbone, out=data["root"] / "frozen")
        result = finetune(str(data["train"]), backbone, "linear", out=data["root"] / "tuned",
                          options=FinetuneOptions.for_objective("contrastive", **OPTS))
        out = {"result": result, "frozen_test": evaluate(data["root"] / "frozen", str(data["test"]))["accuracy"],
               "tuned_test": evaluate(result.path, str(data["test"]))["accuracy"]}
        set_engine(None)
    return out


def test_contrastive_finetune_beats_the_frozen_head_where_frozen_features_are_blind(tuned: dict) -> None:
    result = tuned["result"]
    assert tuned["frozen_test"] < 0.7  # the frozen features cannot tell the keywords apart
    assert tuned["tuned_test"] >= tuned["frozen_test"] + 0.25  # a held-out file, `evaluate` on onnxruntime
    summary = result.summary()
    info = summary["info"]
    assert info["objective"] == "contrastive" and info["items"] == 48 and info["folds"] >= 2
    # the number of epochs was chosen on k-fold held-out items, and that is the score the model reports
    assert summary["finetuned"]["split"] == "cross-validation" and summary["finetuned"]["n"] == 48
    assert summary["best_epoch"] >= 1 and summary["history"][0]["epoch"] == 0
    assert summary["history"][summary["best_epoch"]]["val_accuracy"] > summary["history"][0]["val_accuracy"]
    assert result.model.manifest["finetune"]["options"]["objective"] == "contrastive"


def test_export_passes_parity_and_predicts_in_a_fresh_process_without_torch(tuned: dict, data: dict[str, Path],
                                                                              env_home: Path) -> None:
    result = tuned["result"]
    manifest = result.model.manifest
    parity = manifest["finetune"]["export"]["parity"]
    # the reference is the body that trained: the backbone's numpy twin (no torch in the fine-tune at all)
    assert result.summary()["info"]["engine"] == "numpy"
    assert parity["reference"] == "numpy" and parity["min_cosine"] >= 0.9999 and parity["max_abs_diff"] <= 1e-4
    assert manifest["backbone"]["name"].startswith("finetuned:")
    assert manifest["backbone"]["fingerprint"] != manifest["finetune"]["base_backbone"]["fingerprint"]
    fresh = blind_task(data["root"] / "fresh.csv", 40, 12)
    got = predict_in_fresh_process(result.path, fresh, env_home, timeout=120)
    truth = csv_labels(fresh)
    assert got["torch"] is False and np.mean(np.asarray(got["labels"]) == np.asarray(truth)) >= 0.7
    from headstart.engine.train.api import predict

    assert got["labels"] == list(predict(result.path, str(fresh)).labels)  # the same model as in this process


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_cached_lower_blocks_give_the_embeddings_of_the_full_module(data: dict[str, Path], env_home: Path,
                                                                    engine: str) -> None:
    import torch

    from headstart.engine.plugins import get_engine
    from headstart.engine.train.finetune import FinetuneOptions
    from headstart.plugins.finetune.numpy_body import NumpyBody
    from headstart.plugins.finetune.torch_body import TorchBody
    from headstart.sdk import build_module, make_preprocessor, numpy_twin, resolve_backbone

    spec = resolve_backbone(f"hf:{data['bert']}", get_engine())
    texts = [line.rsplit(",", 1)[0] for line in data["test"].read_text().splitlines()[1:30]]

    class Request:  # what a body reads of a FinetuneRequest
        pass

    request = Request()
    request.spec, request.options = spec, FinetuneOptions(unfreeze="last:1")
    body = (NumpyBody(request, texts, "last:1", numpy_twin(spec)) if engine == "numpy"
            else TorchBody(request, texts, "last:1", seed=0))
    assert body.cached_split and body.trainable_names == ["model.encoder.layer.1"]
    rows = np.asarray([3, 0, 17, 5, 28])  # any rows, any order: each batch is trimmed to its own longest item
    cached = body.embed_all(rows)
    pre = make_preprocessor(spec)
    full = build_module(spec)
    with torch.inference_mode():
        inputs = pre.collate(pre.prepare_many([texts[i] for i in rows]))
        expected = full(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    np.testing.assert_allclose(cached, expected, atol=1e-5)
    if engine == "torch":
        body.finish()  # the original blocks are back: the full state dict again
        assert set(body.module.state_dict()) == set(full.state_dict())


def _cli(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "headstart", "--store", str(home), *args]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the CLI runs share two busy cores with this test process


@pytest.mark.timeout(600)
def test_a_resumed_run_keeps_the_body_and_precision_its_checkpoint_recorded(data: dict[str, Path], env_home: Path,
                                                                            tmp_path: Path) -> None:
    """``--precision auto`` is decided once and kept in the checkpoint with the body that trains (the numpy
    twin in fp32 where the backbone has one, else PyTorch, under bf16 autocast on a CPU with native bf16 dot
    products): a run resumed on another machine must not change them half way. The checkpoint of a run killed
    after its first fold is rewritten to say the PyTorch body in bf16; the resumed run trains that way."""
    from safetensors.numpy import load_file, save_file

    from headstart.plugins.finetune.checkpoint import FILE, read_meta

    out = tmp_path / "model"
    args = ["finetune", str(data["train"]), "-b", f"hf:{data['bert']}", "-o", str(out), "--objective", "contrastive",
            "--unfreeze", "all", "--epochs", "2", "--lr", "3e-3", "--json"]
    pauses, point = tmp_path / "pauses", "finetune-fold-end#1"
    assert run_and_kill_at(_cli(*args, home=env_home), pauses, point, ONE_THREAD)[0]["fold"] == 1
    meta = read_meta(out / "checkpoint")
    assert meta["phase"] == "cv" and meta["engine"] == "numpy" and meta["precision"] == "fp32"
    path = out / "checkpoint" / FILE
    from safetensors import safe_open

    with safe_open(str(path), "np") as fh:
        header = json.loads(fh.metadata()["headstart"])
    save_file(load_file(str(path)), str(path),
              metadata={"headstart": json.dumps({**header, "engine": "torch", "precision": "bf16"})})
    resumed = subprocess.run(_cli(*args, "--resume", home=env_home), capture_output=True, text=True, timeout=300,
                             env=env_with(ONE_THREAD))
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"]["folds_done"] == 1
    assert summary["info"]["engine"] == "torch" and summary["info"]["precision"] == "bf16"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finetune"]["info"]["precision"] == "bf16" and manifest["finetune"]["options"]["precision"] == "auto"
    assert manifest["finetune"]["export"]["parity"]["reference"] == "pytorch"  # the body that trained


@pytest.mark.timeout(900)
def test_kill_9_then_resume_ends_where_an_uninterrupted_run_ends(data: dict[str, Path], env_home: Path,
                                                                 tmp_path: Path) -> None:
    from headstart.plugins.finetune.checkpoint import read_meta

    out = tmp_path / "model"
    args = ["finetune", str(data["train"]), "-b", f"hf:{data['bert']}", "-o", str(out), "--objective", "contrastive",
            "--unfreeze", "all", "--epochs", "4", "--lr", "3e-3", "--patience", "4", "--json"]
    pauses, point = tmp_path / "pauses", "finetune-epoch-end#2"  # epoch 2 of the final run, after its checkpoint
    paused, returncode = run_and_kill_at(_cli(*args, home=env_home), pauses, point, ONE_THREAD)
    assert paused["epoch"] == 2
    assert returncode == -signal.SIGKILL and not (out / "manifest.json").exists()
    meta = read_meta(out / "checkpoint")
    assert meta["phase"] == "final" and meta["epoch"] == 2
    folds_done = len(meta["curves"])
    refused = subprocess.run(_cli(*args, home=env_home), capture_output=True, text=True, timeout=120,
                             env=env_with(ONE_THREAD))
    assert refused.returncode != 0 and "--resume" in refused.stderr  # never restarted silently
    resumed = subprocess.run(_cli(*args, "--resume", home=env_home), capture_output=True, text=True, timeout=300,
                             env=env_with(ONE_THREAD))
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"]["phase"] == "final" and summary["resumed_from"]["epoch"] == 2
    assert summary["resumed_from"]["folds_done"] == folds_done  # the finished folds were not re-run
    assert summary["epochs_run"] == summary["best_epoch"] - 2  # only the final run's remaining epochs ran
    clean = subprocess.run(_cli(*[a if a != str(out) else str(tmp_path / "clean") for a in args], home=env_home),
                           capture_output=True, text=True, timeout=300, env=env_with(ONE_THREAD))
    assert clean.returncode == 0, clean.stderr
    uninterrupted = json.loads(clean.stdout)
    # weights, optimiser moments and RNG were restored: the same fine-tuned weights (the ref is their hash)
    assert summary["backbone"]["name"] == uninterrupted["backbone"]["name"]
    assert summary["best_epoch"] == uninterrupted["best_epoch"] and summary["finetuned"] == uninterrupted["finetuned"]


def test_escalation_fine_tunes_a_small_labelled_set_with_the_contrastive_objective(
        data: dict[str, Path], env_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from headstart.engine.cli import main

    out = tmp_path / "escalated"
    few = blind_task(tmp_path / "few.csv", 24, 14)  # 12 labelled items per class
    code = main(["train", str(few), "-b", f"hf:{data['bert']}", "-o", str(out), "--target",
                 "accuracy=0.99", "--allow-finetune", "--json"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    stages = json.loads(printed)["stages"]
    assert [s["stage"] for s in stages] == ["sweep", "finetune"]
    assert stages[1]["objective"] == "contrastive"
