"""Issue 16, the fixed cost of a contrastive fine-tune, second round: what is written and read per run.

* The fine-tuned backbone file holds only the tensors the fine-tune trained (a delta over the base
  weights), and building the tuned module from it gives the base module with exactly those tensors replaced.
* The tuned ONNX graph is a byte copy of the base export with the planned initializers' spans rewritten
  (no protobuf parse and re-serialisation of the whole model); it equals the graph rewritten through
  protobuf, and when the base graph's bytes are not the ones the plan recorded, nothing is spliced.
* The patch plan is kept per base export and set of changed parameters: a later fine-tune reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune_data import blind_task, distinct_tiny_bert, identity_graph, onnx_initializers

OPTS = dict(unfreeze="all", epochs=6, lr=3e-3, patience=3)  # the blind task needs every block (test_fewshot.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot-cost")
    return {"bert": distinct_tiny_bert(root / "bert"), "train": blind_task(root / "train.csv", 48, 20),
            "root": root, "home": root / "home"}


def test_delta_weights_hold_only_the_trained_tensors_and_build_the_tuned_module(data: dict[str, Path],
                                                                                 env_home: Path) -> None:
    import torch
    from safetensors import safe_open

    from headstart.engine.plugins import get_engine
    from headstart.plugins.finetune.finetuned import WEIGHTS, finetuned_spec, write_finetuned
    from headstart.sdk import BackboneError, build_module, resolve_backbone

    engine = get_engine()
    base = resolve_backbone(f"hf:{data['bert']}", engine)
    state = build_module(base).state_dict()
    top = sorted(n for n in state if ".layer.1." in n)
    assert top and len(top) < len(state)
    tuned = {n: state[n] + 0.5 for n in top}
    ref, files = write_finetuned(env_home / "finetuned", base.name, tuned, {"head": "linear"}, delta=True)
    with safe_open(str(files[0]), "pt") as fh:
        assert sorted(fh.keys()) == top  # the frozen blocks are not copied
    assert json.loads(files[1].read_text())["delta"] is True
    built = finetuned_spec(ref, engine).build_torch().state_dict()
    for name, value in built.items():
        torch.testing.assert_close(value, tuned.get(name, state[name]), rtol=0, atol=0)
    # a delta that does not fit the base (another architecture) is refused, never half loaded
    bad, bad_files = write_finetuned(env_home / "finetuned", base.name, {top[0]: torch.zeros(3, 3)}, {}, delta=True)
    assert bad_files[0].name == WEIGHTS
    with pytest.raises(BackboneError, match="do not fit"):
        finetuned_spec(bad, engine).build_torch()


def test_spliced_graph_equals_the_rewritten_graph_and_stale_offsets_splice_nothing(tmp_path: Path) -> None:
    from headstart.plugins.finetune.graph_patch import graph_plan, raw_offsets, write_patched, write_spliced

    rng = np.random.default_rng(0)
    base = {n: rng.normal(size=(4, 6)).astype(np.float32) for n in ("q", "k", "v", "out", "frozen")}
    base["bias"] = rng.normal(size=6).astype(np.float32)
    fused = np.concatenate([base["q"].T, base["k"].T, base["v"].T], axis=-1)
    graph = identity_graph(tmp_path / "g.onnx", {"qkv": fused, "w_t": base["out"].T.copy(), "b": base["bias"],
                                          "frozen": base["frozen"]})
    plan = graph_plan(graph, base, {"q", "k", "v", "out", "bias"})
    offsets = raw_offsets(graph, plan)
    assert offsets is not None and set(offsets) == set(plan)
    tuned = {n: v * 3.0 - 1.0 for n, v in base.items()}
    assert write_spliced(graph, plan, offsets, tuned, tmp_path / "spliced.onnx")
    write_patched(graph, plan, tuned, tmp_path / "rewritten.onnx")
    spliced, rewritten = onnx_initializers(tmp_path / "spliced.onnx"), onnx_initializers(tmp_path / "rewritten.onnx")
    assert set(spliced) == set(rewritten)
    for name in rewritten:
        np.testing.assert_array_equal(spliced[name], rewritten[name])
    np.testing.assert_array_equal(spliced["frozen"], base["frozen"])
    assert (tmp_path / "spliced.onnx").stat().st_size == graph.stat().st_size
    # the base graph is not the one the offsets were recorded on: nothing is written, the caller rewrites instead
    other = identity_graph(tmp_path / "other.onnx", {"qkv": fused + 1.0, "w_t": base["out"].T.copy(), "b": base["bias"],
                                              "frozen": base["frozen"]})
    assert not write_spliced(other, plan, offsets, tuned, tmp_path / "stale.onnx")
    assert not (tmp_path / "stale.onnx").exists()
    # the same bytes twice in the file: the span cannot be told, so no offsets (protobuf rewrite)
    twice = identity_graph(tmp_path / "twice.onnx", {"w_t": base["out"].T.copy(), "copy": base["out"].T.copy()})
    assert raw_offsets(twice, {"w_t": [["out", "T"]]}) is None


def test_the_patch_plan_is_kept_per_base_export_and_read_by_the_next_fine_tune(data: dict[str, Path],
                                                                               env_home: Path) -> None:
    from safetensors.numpy import load_file

    from headstart.engine.plugins import get_engine
    from headstart.engine.train.finetune import FinetuneOptions, finetune
    from headstart.plugins.finetune.graph_patch import PLANS, plan_for
    from headstart.sdk import build_module, resolve_backbone

    result = finetune(str(data["train"]), f"hf:{data['bert']}", "linear", out=data["root"] / "tuned",
                      options=FinetuneOptions.for_objective("contrastive", **OPTS))
    assert result.outcome.best_epoch >= 1
    folder = env_home / "finetuned" / result.model.backbone["name"].split(":", 1)[1]
    meta = json.loads((folder / "finetuned.json").read_text())
    assert meta["delta"] is True and meta["graph_patch"]["offsets"]  # spliced, not rewritten through protobuf
    plans = list((env_home / "finetuned" / PLANS).glob("*.json"))
    assert len(plans) == 1
    kept, stamp = json.loads(plans[0].read_text()), plans[0].stat().st_mtime_ns
    assert kept["plan"] == meta["graph_patch"]["plan"]
    engine = get_engine()
    base_spec = resolve_backbone(f"hf:{data['bert']}", engine)
    base = {n: v.numpy() for n, v in build_module(base_spec).state_dict().items()}
    tuned = load_file(str(folder / "backbone.safetensors"))
    again = plan_for(base_spec, base, tuned, cache=env_home / "finetuned" / PLANS)
    assert again == meta["graph_patch"]
    assert plans[0].stat().st_mtime_ns == stamp  # read, not made again
