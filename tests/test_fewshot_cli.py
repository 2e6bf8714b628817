"""Issue 16, the fixed cost of ``headstart finetune --objective contrastive``: the command imports neither
transformers nor torch._dynamo, and where the backbone has a numpy twin (plugins/backbones/bert_numpy.py) not
torch at all; the text items are read, not embedded with the base backbone (the contrastive finetuner never reads
those vectors).

The PyTorch body is a plain-PyTorch BERT (plugins/backbones/bert_body.py) with torch's fused AdamW kernel without
torch.optim (plugins/finetune/adamw.py). Both must compute exactly what they replace: the plain body gives Hugging
Face's BertModel outputs and gradients (dropout included, same seed), the optimiser torch.optim.AdamW(fused=True)'s
updates and state, and a whole fine-tune through the CLI in a fresh process writes the same tuned weights (same
content address) as the old path (Hugging Face body + torch.optim). The numpy body's fine-tune imports no torch,
and its export passes the parity gate against it and predicts without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune_data import blind_task, csv_labels, distinct_tiny_bert, predict_in_fresh_process

# the CLI in a fresh process; "torch": the PyTorch body (the backbone's numpy twin withheld); "before": the old
# trainable body and optimiser patched back in as well; "numpy": as it runs
RUN_CLI = """
import json, sys
from headstart.engine.cli import main
from headstart.sdk import TorchBuilder
if sys.argv[1] in ("before", "torch"):
    TorchBuilder.numpy = lambda self: None
if sys.argv[1] == "before":
    import torch
    from headstart.plugins.finetune import adamw
    TorchBuilder.plain = lambda self: None
    adamw.FusedAdamW = lambda groups: torch.optim.AdamW(groups, fused=True)
code = main(sys.argv[2:])
print(json.dumps({"code": code, "transformers": "transformers" in sys.modules,
                  "dynamo": "torch._dynamo" in sys.modules, "sklearn": "sklearn" in sys.modules,
                  "scipy": "scipy" in sys.modules, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot-cli")
    return {"bert": distinct_tiny_bert(root / "bert"), "train": blind_task(root / "train.csv", 32, 40),
            "root": root, "home": root / "home"}


def _inputs(spec, texts: list[str]) -> dict:
    import torch

    from headstart.sdk import make_preprocessor

    pre = make_preprocessor(spec)
    return {k: torch.from_numpy(v) for k, v in pre.collate(pre.prepare_many(texts)).items()}


TEXTS = ["the cat sat on the mat", "fraud", "", "my card was late and the bank sent a new one to me today"]


def test_the_plain_body_computes_what_hugging_faces_bert_does(data: dict[str, Path], env_home: Path) -> None:
    import torch

    from headstart.sdk import trainable_module
    from headstart.sdk import build_module, resolve_backbone

    spec = resolve_backbone(f"hf:{data['bert']}")
    plain, reference = trainable_module(spec), build_module(spec)
    assert not type(plain).__module__.startswith("transformers")
    assert type(reference.model).__module__.startswith("transformers")
    assert list(plain.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in plain.state_dict().items())
    batch = _inputs(spec, TEXTS)
    assert "token_type_ids" in batch  # this tiny BERT has two segment types: they are read too
    batch["token_type_ids"] = torch.randint(0, 2, batch["token_type_ids"].shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(plain(**batch), reference(**batch), atol=1e-6, rtol=0)
    # training mode: dropout at the same places in the same order, so the same seed gives the same outputs and grads
    plain.train(), reference.train()
    outputs = []
    for module in (plain, reference):
        torch.manual_seed(5)
        out = module(**batch)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        outputs.append((out.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (a, grads_a), (b, grads_b) = outputs
    assert not torch.allclose(a, plain.eval()(**batch).detach(), atol=1e-4)  # dropout did act
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert set(grads_a) == set(grads_b)
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-6, rtol=1e-5) for n in grads_b)


def test_the_shipped_minilm_twin_matches_its_reference() -> None:
    import torch

    from headstart.plugins.backbones.minilm import minilm_spec
    from headstart.sdk import trainable_module
    from headstart.sdk import build_module

    spec = minilm_spec()
    plain, reference = trainable_module(spec), build_module(spec)
    assert not type(plain).__module__.startswith("transformers")
    batch = _inputs(spec, TEXTS)
    with torch.no_grad():
        assert torch.allclose(plain(**batch), reference(**batch), atol=1e-6, rtol=0)


def test_a_folder_the_plain_body_does_not_cover_builds_the_reference(tmp_path: Path) -> None:
    from headstart.plugins.backbones.bert_body import bert_text_encoder

    folder = tmp_path / "bert"
    distinct_tiny_bert(folder)
    assert bert_text_encoder(folder, "mean", True) is not None
    config = json.loads((folder / "config.json").read_text())
    for change in ({"position_embedding_type": "relative_key"}, {"hidden_act": "relu"}, {"model_type": "roberta"}):
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        assert bert_text_encoder(folder, "mean", True) is None, change
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    assert bert_text_encoder(folder, "mean", True) is None


def test_fused_adamw_makes_torch_optims_updates_and_resumes_from_its_state() -> None:
    import torch

    from headstart.plugins.finetune.adamw import FusedAdamW

    def params() -> list:
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(7, 5, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen)),
                torch.nn.Parameter(torch.randn(3, 3, generator=gen))]

    def groups(ps: list) -> list:
        return [{"params": ps[:2], "lr": 1e-2, "weight_decay": 0.01}, {"params": ps[2:], "lr": 5e-3, "weight_decay": 0.0}]

    def step(ps: list, opt) -> None:
        opt.zero_grad(set_to_none=True)
        (sum((p ** 2).sum() * (i + 1) for i, p in enumerate(ps)) + ps[0].sin().sum()).backward()
        opt.step()

    ours, theirs = params(), params()
    opt_ours, opt_theirs = FusedAdamW(groups(ours)), torch.optim.AdamW(groups(theirs), fused=True)
    for _ in range(4):
        step(ours, opt_ours), step(theirs, opt_theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    mine, torchs = opt_ours.state_dict(), opt_theirs.state_dict()
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in torchs["param_groups"]]
    assert all(torch.equal(mine["state"][i][k], v) for i, entry in torchs["state"].items() for k, v in entry.items())
    # a resumed optimiser (the checkpoint's state dict, JSON groups) continues exactly
    resumed_params = params()
    with torch.no_grad():
        for a, b in zip(resumed_params, ours):
            a.copy_(b)
    resumed = FusedAdamW(groups(resumed_params))
    resumed.load_state_dict({"state": mine["state"], "param_groups": json.loads(json.dumps(mine["param_groups"]))})
    step(ours, opt_ours), step(resumed_params, resumed), step(theirs, opt_theirs)
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, theirs))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    # without the private fused kernel (a torch build that lacks it): the same rule in plain tensor operations
    plain, reference = params(), params()
    opt_plain = FusedAdamW(groups(plain), fused=False)
    opt_reference = torch.optim.AdamW(groups(reference), foreach=False)
    for _ in range(5):
        step(plain, opt_plain), step(reference, opt_reference)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(plain, reference))
    assert not all(torch.equal(a, b) for a, b in zip(plain, params()))  # it did train


@pytest.mark.parametrize("labels, folds, seed", [
    ([0, 1] * 8, 2, 0), ([1, 0, 0, 1, 1, 0, 1, 0, 0, 1], 2, 7), (list("cabbacabcabcbbaacc"), 3, 3),
    (["x"] * 5 + ["y"] * 9 + ["z"] * 4, 2, 11), ([2, 2, 0, 1, 0, 1, 2, 0, 1, 1, 2, 0], 4, 1)])
def test_stratified_folds_are_scikit_learns(labels: list, folds: int, seed: int) -> None:
    from sklearn.model_selection import StratifiedKFold

    from headstart.sdk import stratified_folds

    y = np.asarray(labels)
    theirs = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    ours = stratified_folds(y, folds, seed)
    assert len(ours) == len(theirs)
    for (a, b), (c, d) in zip(ours, theirs):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def _finetune(path: str, data: dict[str, Path], name: str, home: Path) -> tuple[dict, dict]:
    out = data["root"] / name
    args = ["finetune", str(data["train"]), "-b", f"hf:{data['bert']}", "-o", str(out), "--objective", "contrastive",
            "--unfreeze", "all", "--epochs", "3", "--lr", "3e-3", "--json", "--no-progress"]
    run = subprocess.run([sys.executable, "-c", RUN_CLI, path, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HEADSTART_HOME": str(home), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    modules = json.loads(run.stderr.strip().splitlines()[-1])
    assert modules["code"] == 0, run.stderr[-3000:]
    return json.loads(run.stdout), modules


def test_the_torch_body_imports_neither_and_trains_the_same_weights(data: dict[str, Path], env_home: Path) -> None:
    from headstart.engine.backbones.export import export

    # each path in its own home: the tuned weights are written and exported (parity gate) by each; the base
    # backbone's export (a one-time cost, which needs transformers) is made beforehand in the new path's home
    before, before_modules = _finetune("before", data, "before", data["root"] / "home-before")
    export(f"hf:{data['bert']}", "fp32")
    after, after_modules = _finetune("torch", data, "torch", env_home)
    assert after["info"]["engine"] == "torch" and after["export"]["parity"]["reference"] == "pytorch"
    assert before_modules["transformers"] and before_modules["dynamo"]  # the old path (the check can fail)
    assert not after_modules["transformers"] and not after_modules["dynamo"]
    # nor scikit-learn (the head's parameter check, the folds and the head's copy are headstart's own)
    assert not after_modules["sklearn"] and not after_modules["scipy"]
    assert after["best_epoch"] >= 1
    # the same tuned weights (content address) and the same export: bit-identical training
    assert after["backbone"]["name"] == before["backbone"]["name"]
    assert after["export"]["fingerprint"] == before["export"]["fingerprint"]
    assert after["export"]["parity"]["min_cosine"] >= 0.9999

    def curve(summary: dict) -> list:  # the cross-validated curve and losses, without the timings
        return [{k: v for k, v in row.items() if k != "seconds"} for row in summary["history"]]

    assert curve(after) == curve(before)


def test_the_numpy_body_fine_tunes_without_importing_torch(data: dict[str, Path], env_home: Path) -> None:
    from headstart.engine.backbones.export import export

    base = export(f"hf:{data['bert']}", "fp32")  # a one-time cost (it needs transformers and torch)
    after, modules = _finetune("numpy", data, "numpy", env_home)
    assert after["info"]["engine"] == "numpy" and after["info"]["precision"] == "fp32"
    assert not any(modules[m] for m in ("torch", "transformers", "dynamo", "sklearn", "scipy")), modules
    # the items were read, not embedded with the base backbone: its vectors would go unused
    assert not (env_home / "features" / base.fingerprint).exists()
    assert after["best_epoch"] >= 1
    parity = after["export"]["parity"]  # the patched graph against the numpy body that trained
    assert parity["reference"] == "numpy" and parity["min_cosine"] >= 0.9999 and parity["max_abs_diff"] <= 1e-4
    fresh = blind_task(data["root"] / "fresh.csv", 24, 41)
    got = predict_in_fresh_process(Path(after["model"]), fresh, env_home)
    assert got["torch"] is False and len(got["labels"]) == len(csv_labels(fresh))
    assert np.mean(np.asarray(got["labels"]) == np.asarray(csv_labels(fresh))) >= 0.6
