"""Issue 6 acceptance: fine-tuning beats frozen heads where frozen features are blind, kill -9 + --resume,
the parity-gated export predicts without torch, and escalation stops after the sweep on an easy task.

The model is a tiny random BERT whose embeddings of ``fraud`` and ``payment`` are identical
(tests/finetune_data.py): frozen features cannot separate the two classes, fine-tuning can.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune_data import blind_task, easy_task, tiny_bert_blind
from pause_control import run_and_kill_at

OPTS = dict(epochs=5, lr=3e-3, batch_size=16, patience=2)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ft-home")


@pytest.fixture
def env_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADSTART_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ft-data")
    return {"bert": tiny_bert_blind(root / "bert"), "train": blind_task(root / "train.csv", 160, 0),
            "test": blind_task(root / "test.csv", 80, 1), "small": blind_task(root / "small.csv", 64, 2),
            "easy": easy_task(root / "easy.csv", 80, 3), "root": root}


@pytest.fixture(scope="module")
def tuned(data: dict[str, Path], home: Path) -> dict:
    """Fine-tune once (module scope): the best frozen head of a sweep, the fine-tuned model, both on test."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HEADSTART_HOME", str(home))
    from headstart.engine.plugins import set_engine
    from headstart.engine.train.api import evaluate, sweep
    from headstart.engine.train.finetune import FinetuneOptions, finetune

    set_engine(None)
    backbone = f"hf:{data['bert']}"
    frozen = sweep(str(data["train"]), backbone=backbone, save_best=data["root"] / "frozen")
    result = finetune(str(data["train"]), backbone, "linear", out=data["root"] / "tuned",
                      options=FinetuneOptions(**OPTS))
    out = {"sweep": frozen, "result": result,
           "frozen_test": evaluate(data["root"] / "frozen", str(data["test"]))["accuracy"],
           "tuned_test": evaluate(result.path, str(data["test"]))["accuracy"]}
    set_engine(None)
    mp.undo()
    return out


def test_finetuning_beats_the_best_frozen_head_on_held_out_data(tuned: dict) -> None:
    best_frozen_val = max(r["accuracy"] for r in tuned["sweep"].rows if "error" not in r)
    result = tuned["result"]
    assert best_frozen_val < 0.7 and tuned["frozen_test"] < 0.7  # the frozen features are blind to the label
    assert result.metrics["accuracy"] >= best_frozen_val + 0.2  # validation, scored on the ONNX export
    assert tuned["tuned_test"] >= tuned["frozen_test"] + 0.2  # a held-out file, `evaluate` on onnxruntime
    summary = result.summary()
    assert summary["history"][0]["epoch"] == 0 and summary["best_epoch"] >= 1
    assert summary["info"]["trainable_parameters"] > 0 and summary["info"]["device"] == "cpu"


def test_export_is_parity_checked_against_the_finetuned_model_and_predicts_without_torch(
        tuned: dict, data: dict[str, Path], env_home: Path) -> None:
    from headstart.engine.backbones.export import export, find_export
    from headstart.engine.backbones.preprocess import make_preprocessor
    from headstart.engine.backbones.resolve import resolve_backbone
    from headstart.engine.backbones.runtime import Encoder

    result = tuned["result"]
    manifest = result.model.manifest
    parity = manifest["finetune"]["export"]["parity"]
    assert parity["reference"] == "pytorch" and parity["min_cosine"] >= 0.9999 and parity["max_abs_diff"] <= 1e-4
    base_fp = manifest["finetune"]["base_backbone"]["fingerprint"]
    assert manifest["backbone"]["fingerprint"] != base_fp and manifest["backbone"]["name"].startswith("finetuned:")
    assert (result.path / "backbone" / "backbone.safetensors").is_file()
    # the fine-tuned graph tells the two keywords apart; the base graph cannot
    tuned_spec = resolve_backbone(manifest["backbone"]["name"])
    pair = ["the cat sat fraud on mat", "the cat sat payment on mat"]
    outs = {}
    for name, spec in (("base", resolve_backbone(f"hf:{data['bert']}")), ("tuned", tuned_spec)):
        pre = make_preprocessor(spec)
        exported = find_export(spec) or export(spec)
        outs[name] = Encoder(exported, device="cpu").run(pre.collate(pre.prepare_many(pair)))
    assert np.allclose(outs["base"][0], outs["base"][1], atol=1e-6)
    assert not np.allclose(outs["tuned"][0], outs["tuned"][1], atol=1e-3)
    fresh = blind_task(data["root"] / "fresh.csv", 40, 7)  # not in any feature store yet: the session must run
    code = ("import json, sys\nfrom headstart.engine.train.api import predict\n"
            f"p = predict({str(result.path)!r}, {str(fresh)!r})\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'ort': 'onnxruntime' in sys.modules, "
            "'labels': p.labels}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HEADSTART_HOME": str(env_home)})
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["ort"] is True
    truth = [line.rsplit(",", 1)[1] for line in fresh.read_text().splitlines()[1:]]
    assert np.mean(np.asarray(got["labels"]) == np.asarray(truth)) >= 0.8


def _cli(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "headstart", "--store", str(home), *args]


def test_kill_9_then_resume_continues_from_the_last_checkpoint(data: dict[str, Path], env_home: Path,
                                                                tmp_path: Path) -> None:
    from headstart.engine.plugins import set_engine
    from headstart.engine.train.finetune import FinetuneOptions, finetune
    from headstart.engine.train.model import load_model
    from headstart.plugins.finetune.checkpoint import read_meta

    out = tmp_path / "model"
    args = ["finetune", str(data["small"]), "-b", f"hf:{data['bert']}", "-o", str(out), "--epochs", "5",
            "--lr", "3e-3", "--batch-size", "16", "--patience", "10", "--json"]
    # The run stops at the pause point right after epoch 2's checkpoint is written and is killed there.
    pauses, point = tmp_path / "pauses", "finetune-epoch-end#2"
    paused, returncode = run_and_kill_at(_cli(*args, home=env_home), pauses, point)
    assert paused["epoch"] == 2
    assert returncode == -signal.SIGKILL and not (out / "manifest.json").exists()
    meta = read_meta(out / "checkpoint")
    killed_at, steps = meta["epoch"], meta["optimizer_steps"]
    assert killed_at == 2 and steps == killed_at * 4  # 52 training rows, batches of 16
    refused = subprocess.run(_cli(*args, home=env_home), capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--resume" in refused.stderr  # never restarted silently
    resumed = subprocess.run(_cli(*args, "--resume", home=env_home), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"]["epoch"] == killed_at and summary["resumed_from"]["optimizer_steps"] == steps
    assert summary["epochs_run"] == 5 - killed_at and summary["info"]["optimizer_steps"] == 5 * 4
    assert summary["history"][: killed_at + 1] == meta["history"]  # the epochs before the kill were not re-run
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2, 3, 4, 5]  # ... and the run went past the kill
    assert not (out / "checkpoint").exists() and (out / "manifest.json").is_file()
    # weights, optimiser moments and RNG were all restored: the result equals an uninterrupted run
    set_engine(None)
    clean = finetune(str(data["small"]), f"hf:{data['bert']}", out=tmp_path / "clean",
                     options=FinetuneOptions(epochs=5, lr=3e-3, batch_size=16, patience=10))
    assert summary["backbone"]["name"] == clean.model.backbone["name"]  # finetuned:<sha of the weights>

    def scores(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    ours, theirs = scores(summary["history"]), scores(clean.summary()["history"])
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):  # every epoch's scores equal those of the uninterrupted run
        assert a == pytest.approx(b, abs=1e-5)
    resumed_head, clean_head = load_model(out).head._state()[0], clean.model.head._state()[0]
    assert set(resumed_head) == set(clean_head) and resumed_head
    for name, array in clean_head.items():
        np.testing.assert_allclose(resumed_head[name], array, atol=1e-6, err_msg=name)
    set_engine(None)


def test_target_met_by_the_head_sweep_stops_before_finetuning(data: dict[str, Path], env_home: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from headstart.engine.cli import main

    out = tmp_path / "easy-model"
    code = main(["train", str(data["easy"]), "-b", f"hf:{data['bert']}", "-o", str(out), "--target",
                 "accuracy=0.99", "--allow-finetune"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "stopped after the head sweep, no fine-tuning needed" in printed and "stage 2" not in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert "finetune" not in manifest and not manifest["backbone"]["name"].startswith("finetuned:")
    assert main(["train", str(data["easy"]), "-o", str(out), "--allow-finetune"]) == 2  # needs --target
