"""Issue 16, the fixed cost of a contrastive fine-tune: the tuned graph is the base export with the tuned
weights written into its initializers (no tracing, no fusion pass), and k-fold checkpoints hold no weights.

The patched graph must embed exactly like a graph traced from the same weights; the plan that places
the weights must refuse what it cannot place (a folded weight, two parameters with equal values), so
such a backbone is traced as before; a run killed during the k-fold phase resumes and ends where an
uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune_data import blind_task, distinct_tiny_bert, identity_graph, onnx_initializers
from pause_control import env_with, run_and_kill_at

# the blind task needs the embedding rows to move, so every block trains (tests/test_fewshot.py)
OPTS = dict(unfreeze="all", epochs=6, lr=3e-3, patience=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot-speed")
    return {"bert": distinct_tiny_bert(root / "bert"), "train": blind_task(root / "train.csv", 48, 20),
            "test": blind_task(root / "test.csv", 40, 21), "root": root, "home": root / "home"}


def test_tuned_graph_is_the_base_export_with_the_tuned_initializers(data: dict[str, Path], env_home: Path) -> None:
    from headstart.engine.backbones.runtime import Encoder
    from headstart.engine.backbones.export import export
    from headstart.engine.plugins import get_engine
    from headstart.engine.train.finetune import FinetuneOptions, finetune
    from headstart.sdk import make_preprocessor, resolve_backbone

    engine = get_engine()
    base_ref = f"hf:{data['bert']}"
    result = finetune(str(data["train"]), base_ref, "linear", out=data["root"] / "tuned",
                      options=FinetuneOptions.for_objective("contrastive", **OPTS))
    tuned_spec = resolve_backbone(result.model.backbone["name"], engine)
    assert dict(tuned_spec.extra)["exporter"] == "the base export's graph, tuned initializers"
    tuned_export = export(tuned_spec, "fp32", engine=engine)
    assert tuned_export.manifest["parity"]["min_cosine"] >= 0.9999  # the gate compared it with the tuned PyTorch model
    base_graph = onnx_initializers(export(resolve_backbone(base_ref, engine), "fp32", engine=engine).path)
    patched = onnx_initializers(tuned_export.path)
    assert set(patched) == set(base_graph)  # the same graph, node for node
    changed = {n for n in patched if not np.array_equal(patched[n], base_graph[n])}
    meta = json.loads(next((data["home"] / "finetuned").glob("*/finetuned.json")).read_text())
    assert changed and changed == set(meta["graph_patch"]["plan"])  # exactly the planned initializers moved
    assert result.outcome.best_epoch >= 1
    # the same weights traced with torch.onnx (the path without a plan) embed the same
    traced_spec = dataclasses.replace(tuned_spec, name=tuned_spec.name + "-traced", export_onnx=None,
                                      extra=tuple(e for e in tuned_spec.extra if e[0] not in ("exporter", "graph_optimizer"))
                                      + (("traced", True),))
    traced = export(traced_spec, "fp32", engine=engine)
    assert traced.fingerprint != tuned_export.fingerprint
    texts = [line.rsplit(",", 1)[0] for line in data["test"].read_text().splitlines()[1:]]
    pre = make_preprocessor(tuned_spec)
    batch = pre.collate(pre.prepare_many(texts))
    np.testing.assert_allclose(Encoder(tuned_export, device="cpu").run(batch), Encoder(traced, device="cpu").run(batch),
                               atol=1e-4)


def _param(name: str, values: np.ndarray) -> tuple[str, np.ndarray]:
    return name, values.astype(np.float32)


def test_graph_plan_places_plain_transposed_and_fused_weights_and_refuses_what_it_cannot_place(tmp_path: Path) -> None:
    from headstart.plugins.finetune.graph_patch import graph_plan, write_patched

    rng = np.random.default_rng(0)
    base = dict(_param(n, rng.normal(size=(4, 6))) for n in ("q", "k", "v", "out", "frozen"))
    base["bias"] = rng.normal(size=6).astype(np.float32)
    fused = np.concatenate([base["q"].T, base["k"].T, base["v"].T], axis=-1)  # (6, 12): a fused Q/K/V
    graph = identity_graph(tmp_path / "g.onnx", {"qkv": fused, "w_t": base["out"].T.copy(), "b": base["bias"],
                                          "frozen": base["frozen"]})
    changed = {"q", "k", "v", "out", "bias"}
    plan = graph_plan(graph, base, changed)
    assert plan == {"qkv": [["q", "T"], ["k", "T"], ["v", "T"]],
                    "w_t": [["out", "T"]], "b": [["bias", ""]]}
    tuned = {n: v + 1.0 for n, v in base.items()}
    write_patched(graph, plan, tuned, tmp_path / "patched.onnx")
    got = onnx_initializers(tmp_path / "patched.onnx")
    np.testing.assert_array_equal(got["qkv"], np.concatenate([tuned["q"].T, tuned["k"].T, tuned["v"].T], axis=-1))
    np.testing.assert_array_equal(got["w_t"], tuned["out"].T)
    np.testing.assert_array_equal(got["frozen"], base["frozen"])  # not planned: left as it was
    # a weight the exporter folded into another (scaled) cannot be placed: trace instead
    folded = identity_graph(tmp_path / "folded.onnx", {"w": base["out"] * 0.5, "b": base["bias"]})
    assert graph_plan(folded, base, {"out", "bias"}) is None
    # two parameters with equal values: which one an initializer holds cannot be told
    twins = {**base, "twin": base["out"].copy()}
    assert graph_plan(identity_graph(tmp_path / "twins.onnx", {"w": base["out"]}), twins, {"out"}) is None


def _cli(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "headstart", "--store", str(home), *args]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.mark.timeout(900)
def test_kill_9_during_the_k_fold_phase_then_resume_ends_where_an_uninterrupted_run_ends(
        data: dict[str, Path], env_home: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from headstart.plugins.finetune.checkpoint import FILE, read_meta

    out = tmp_path / "model"
    args = ["finetune", str(data["train"]), "-b", f"hf:{data['bert']}", "-o", str(out), "--objective", "contrastive",
            "--unfreeze", "all", "--epochs", "4", "--lr", "3e-3", "--patience", "4", "--json"]
    pauses, point = tmp_path / "pauses", "finetune-fold-end#2"  # after the second fold's checkpoint
    paused, returncode = run_and_kill_at(_cli(*args, home=env_home), pauses, point, ONE_THREAD)
    assert paused["fold"] == 2
    assert returncode == -signal.SIGKILL
    meta = read_meta(out / "checkpoint")
    assert meta["phase"] == "cv" and len(meta["curves"]) == 2
    with safe_open(str(out / "checkpoint" / FILE), framework="pt") as fh:
        assert not [k for k in fh.keys() if k.startswith("model.")]  # the k-fold phase resets the weights per fold
    resumed = subprocess.run(_cli(*args, "--resume", home=env_home), capture_output=True, text=True, timeout=300,
                             env=env_with(ONE_THREAD))
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"]["phase"] == "cv" and summary["resumed_from"]["folds_done"] == 2
    clean = subprocess.run(_cli(*[a if a != str(out) else str(tmp_path / "clean") for a in args], home=env_home),
                           capture_output=True, text=True, timeout=300, env=env_with(ONE_THREAD))
    assert clean.returncode == 0, clean.stderr
    uninterrupted = json.loads(clean.stdout)
    assert summary["backbone"]["name"] == uninterrupted["backbone"]["name"]  # the same weights (the ref is their hash)
    assert summary["best_epoch"] == uninterrupted["best_epoch"] and summary["finetuned"] == uninterrupted["finetuned"]
