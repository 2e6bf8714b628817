"""Sequence backbones end to end: an ``hf:`` PatchTST built tiny from a config passes the export gate and embeds an
events table; a ``headstart pretrain`` folder is a backbone by name (``--name``) or folder for embed, train,
sweep, eval, predict, finetune and bundle, with its vocabulary picked up from the backbone."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from example_transactions import generate_transactions

EVENTS = ["--group-by", "account_id", "--order-by", "ts", "--window", "16"]
NUMERIC = [*EVENTS, "--fields", "log_amount,log_gap"]
WITH_CATEGORIES = [*NUMERIC, "--categorical", "category,country"]  # no --vocabulary: the backbone's


def _cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEADSTART_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def transactions(tmp_path_factory) -> Path:
    """A tiny run of the example generator: 80 pool accounts, 120 labelled, 30 test (30 % fraud)."""
    return generate_transactions(tmp_path_factory.mktemp("tx"), test=30)


# -- hf: PatchTST ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def patchtst(tmp_path_factory) -> Path:
    import torch
    from transformers import PatchTSTConfig, PatchTSTModel

    config = PatchTSTConfig(num_input_channels=2, context_length=12, patch_length=4, patch_stride=3, d_model=16,
                            num_attention_heads=2, num_hidden_layers=1, ffn_dim=32)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("patchtst")
    PatchTSTModel(config).save_pretrained(folder)
    return folder


def test_an_hf_patchtst_passes_the_gate_and_embeds_an_events_table(transactions: Path, patchtst: Path,
                                                                    tmp_path: Path):
    home = tmp_path / "home"
    exported = _cli("export", f"hf:{patchtst}", "--json", home=home, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    parity = json.loads(exported.stdout)["parity"]
    assert parity["reference"] == "pytorch" and parity["max_abs_diff"] < 1e-4 and parity["items"] >= 16
    embed = _cli("embed", str(transactions / "labelled.parquet"), "-b", f"hf:{patchtst}", *NUMERIC, "--json",
                 home=home, cwd=tmp_path)
    assert embed.returncode == 0, embed.stderr
    summary = json.loads(embed.stdout)
    assert summary["embedded"] == 120 and summary["failed"] == 0
    train = _cli("train", str(transactions / "labelled.parquet"), "-b", f"hf:{patchtst}", *NUMERIC, "--head",
                 "linear", "-o", str(tmp_path / "model"), "--json", home=home, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["backbone"]["dim"] == 16


def test_the_patchtst_graph_matches_the_unmodified_model_on_real_windows(transactions: Path, patchtst: Path,
                                                                         tmp_path: Path, monkeypatch):
    """Windows longer and shorter than the model's context, padded in one batch, against the model as
    transformers runs it (its own ``unfold`` patchifier), one item at a time."""
    import onnxruntime as ort
    import torch

    from headstart.engine.backbones.export import export
    from headstart.engine.backbones.resolve import resolve_backbone
    from headstart.engine.config import Settings
    from headstart.engine.embed.items import ReaderOptions
    from headstart.engine.embed.sources import open_source
    from headstart.engine.plugins import Engine
    from headstart.engine.sequences.options import event_options
    from headstart.plugins.backbones.hf_sequence import build_sequence_encoder

    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    engine = Engine(Settings.from_env())
    spec = resolve_backbone(f"hf:{patchtst}", engine)
    assert spec.modality == "numeric" and spec.preprocessing.mask_name == "mask" and spec.dim == 16
    graph = export(spec, "fp32", settings=engine.settings, engine=engine)
    assert graph.parity["max_abs_diff"] < 1e-4
    ev = event_options("account_id", "ts", "log_amount,log_gap", window="20", per="event")  # windows of 1 to 20
    items = [it.payload for it in open_source(str(transactions / "labelled.parquet"), ReaderOptions(events=ev))][:24]
    lengths = sorted({len(a) for a in items})
    assert lengths[0] < 12 < lengths[-1]  # shorter and longer than the context
    x = np.zeros((len(items), max(lengths), 2), np.float32)
    mask = np.zeros((len(items), max(lengths)), np.int64)
    for i, a in enumerate(items):
        x[i, : len(a)], mask[i, : len(a)] = a, 1
    got = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"]).run(None, {"x": x, "mask": mask})[0]
    reference = build_sequence_encoder(str(patchtst), normalize=False)
    with torch.no_grad():
        want = np.concatenate([reference(torch.from_numpy(a[None]), torch.ones(1, len(a), dtype=torch.int64)).numpy()
                               for a in items])
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want[0] - want[1]).max() > 1e-3  # not a constant


# -- a pretrained folder as a backbone ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def named(transactions: Path, tmp_path_factory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("pretrained") / "bb"
    result = _cli("pretrain", str(transactions / "pool.parquet"), *WITH_CATEGORIES, "--epochs", "2", "--hidden", "8",
                  "-o", str(out), "--name", "fraud-encoder", home=home, cwd=out.parent)
    assert result.returncode == 0, result.stderr
    assert "-b fraud-encoder" in result.stdout
    return out, home


def test_a_named_pretrained_backbone_works_in_every_command_without_vocabulary(transactions: Path,
                                                                                named: tuple[Path, Path],
                                                                                tmp_path: Path):
    out, home = named
    labelled, test = str(transactions / "labelled.parquet"), str(transactions / "test.parquet")
    embed = _cli("embed", labelled, "-b", "fraud-encoder", *WITH_CATEGORIES, "--json", home=home, cwd=tmp_path)
    assert embed.returncode == 0, embed.stderr
    assert json.loads(embed.stdout)["embedded"] == 120
    again = _cli("embed", labelled, "-b", str(out), *WITH_CATEGORIES, "--json", home=home, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["embedded"] == 0  # the folder is the same backbone: every vector cached
    sweep = _cli("sweep", labelled, "-b", "fraud-encoder", *WITH_CATEGORIES, "--heads", "linear,knn", "--metric",
                 "average_precision", home=home, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    train = _cli("train", labelled, "-b", "fraud-encoder", *WITH_CATEGORIES, "--head", "linear", "--threshold-for",
                 "recall=0.8", "-o", str(tmp_path / "model"), home=home, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    evaluated = _cli("eval", str(tmp_path / "model"), test, *WITH_CATEGORIES, "--json", home=home, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "average_precision" in evaluated.stdout
    predicted = _cli("predict", str(tmp_path / "model"), test, *WITH_CATEGORIES, "-o", str(tmp_path / "p.csv"),
                     home=home, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == 30


def test_a_named_pretrained_backbone_fine_tunes_and_bundles(transactions: Path, named: tuple[Path, Path],
                                                            tmp_path: Path):
    import onnxruntime as ort

    from headstart.engine.embed.items import ReaderOptions
    from headstart.engine.embed.sources import open_source
    from headstart.engine.sequences.options import event_options

    out, home = named
    labelled, test = str(transactions / "labelled.parquet"), str(transactions / "test.parquet")
    tuned = _cli("finetune", labelled, "-b", "fraud-encoder", *WITH_CATEGORIES, "--epochs", "2", "--lr", "1e-3",
                 "-o", str(tmp_path / "tuned"), home=home, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    assert "finetuned:" in tuned.stdout and "parity" in tuned.stdout
    predicted = _cli("predict", str(tmp_path / "tuned"), test, *WITH_CATEGORIES, "-o", str(tmp_path / "p.csv"),
                     home=home, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr

    train = _cli("train", labelled, "-b", "fraud-encoder", *WITH_CATEGORIES, "--head", "linear", "-o",
                 str(tmp_path / "model"), home=home, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    bundle = _cli("bundle", str(tmp_path / "model"), "-o", str(tmp_path / "fraud.onnx"), *WITH_CATEGORIES,
                  home=home, cwd=tmp_path)
    assert bundle.returncode == 0, bundle.stderr
    assert "parity on 120 training items" in bundle.stdout
    predicted = _cli("predict", str(tmp_path / "model"), test, *WITH_CATEGORIES, "-o", str(tmp_path / "m.csv"),
                     home=home, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    session = ort.InferenceSession(str(tmp_path / "fraud.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "mask"]
    ev = event_options("account_id", "ts", "log_amount,log_gap", "category,country", window="16",
                       vocabulary=str(out / "vocabulary.json"))
    items = [it.payload for it in open_source(test, ReaderOptions(events=ev))]
    x = np.zeros((len(items), max(len(a) for a in items), items[0].shape[1]), np.float32)
    mask = np.zeros(x.shape[:2], np.int64)
    for i, a in enumerate(items):
        x[i, : len(a)], mask[i, : len(a)] = a, 1
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x, "mask": mask})))
    labels = [str(v.decode() if isinstance(v, bytes) else v) for v in outputs["label"]]
    want = [row for row in csv.DictReader((tmp_path / "m.csv").open())]
    key = next(k for k in want[0] if k in ("label", "prediction", "predicted"))
    assert labels == [row[key] for row in want]


def test_backbone_names_and_missing_vocabularies_are_one_line_errors(transactions: Path, named: tuple[Path, Path],
                                                                      patchtst: Path, tmp_path: Path):
    out, home = named
    pool = str(transactions / "pool.parquet")
    for args, says in [
        (["pretrain", pool, *NUMERIC, "-o", str(tmp_path / "x"), "--name", "bad name"], "is not a backbone name"),
        (["pretrain", pool, *NUMERIC, "-o", str(tmp_path / "x"), "--name", "minilm-l6"], "already a registered"),
        (["embed", pool, "-b", "no-such-encoder", *NUMERIC], "unknown backbone 'no-such-encoder'"),
        (["embed", pool, "-b", f"onnx:{out / 'encoder.onnx'}", *NUMERIC, "--categorical", "merchant"],
         "has no values for merchant"),
        (["embed", pool, "-b", f"hf:{patchtst}", *EVENTS, "--fields", "log_amount", "--categorical", "category"],
         "need a vocabulary"),
    ]:
        result = _cli(*args, home=tmp_path / "home", cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and says in lines[0] and lines[1].startswith("hint:") and len(lines) == 2, \
            result.stderr
    assert not (tmp_path / "x").exists()


def test_contrastive_pretraining_learns_and_embeds_pooled_states(transactions: Path, tmp_path: Path):
    home, out = tmp_path / "home", tmp_path / "cb"
    result = _cli("pretrain", str(transactions / "pool.parquet"), *WITH_CATEGORIES, "--objective", "contrastive",
                  "--epochs", "3", "--hidden", "8", "--batch-size", "16", "--patience", "5", "-o", str(out),
                  home=home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["objective"] == "contrastive views" and summary["parity"]["max_abs_diff"] < 1e-4
    first = float(result.stderr.split("epoch 0: validation loss ")[1].split()[0])
    assert min(e["val_loss"] for e in summary["history"]) < first  # the views of an account got closer
    train = _cli("train", str(transactions / "labelled.parquet"), "-b", str(out), *WITH_CATEGORIES, "--head", "linear",
                 "-o", str(tmp_path / "model"), "--json", home=home, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["backbone"]["dim"] == 2 * 8  # last + mean GRU state
