"""``ArrayAdamW`` (plugins/finetune/adamw.py), AdamW over numpy arrays without torch: torch.optim.AdamW's updates
and state (foreach=False, the rule of ``adamw_update``) within float rounding, parameters without a gradient left
alone, and a resume from its state dict that continues bit-identically; neither it nor ``pair_cosine_loss_np``
imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from headstart.plugins.finetune.adamw import ArrayAdamW

SHAPES = {"w": (4, 3), "b": (3,), "c": (5,)}
GROUPS = [{"params": ["w", "b"], "lr": 1e-2, "weight_decay": 0.01}, {"params": ["c"], "lr": 5e-3, "weight_decay": 0.0}]


def _params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}


def _grads(steps: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    grads = [{n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(steps)]
    del grads[2]["b"]  # no gradient for "b" in the third step: skipped, its state untouched
    return grads


def _fresh(params: dict[str, np.ndarray]) -> ArrayAdamW:
    return ArrayAdamW([dict(g) for g in GROUPS], params)


def test_array_adamw_makes_torch_optims_updates_and_state() -> None:
    import torch

    ours = _params()
    opt = _fresh(ours)
    theirs = {n: torch.nn.Parameter(torch.from_numpy(a.copy())) for n, a in ours.items()}
    reference = torch.optim.AdamW([{**g, "params": [theirs[n] for n in g["params"]]} for g in GROUPS], foreach=False)
    for grads in _grads(5):
        for n, p in theirs.items():
            p.grad = torch.from_numpy(grads[n].copy()) if n in grads else None
        reference.step()
        opt.step(grads)
        for n, p in theirs.items():
            np.testing.assert_allclose(ours[n], p.detach().numpy(), rtol=0, atol=1e-6)
    mine, torchs = opt.state_dict(), reference.state_dict()
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in torchs["param_groups"]]
    assert [g["betas"] for g in mine["param_groups"]] == [list(g["betas"]) for g in torchs["param_groups"]]
    assert mine["state"].keys() == torchs["state"].keys()
    for i, entry in torchs["state"].items():
        assert mine["state"][i]["step"].shape == () and mine["state"][i]["step"].dtype == np.float32
        assert float(mine["state"][i]["step"]) == float(entry["step"])
        for k in ("exp_avg", "exp_avg_sq"):
            assert mine["state"][i][k].dtype == np.float32
            np.testing.assert_allclose(mine["state"][i][k], entry[k].numpy(), rtol=0, atol=1e-6)
    assert float(mine["state"][1]["step"]) == 4.0  # "b" skipped once
    assert not all(np.array_equal(a, b) for a, b in zip(ours.values(), _params().values()))  # it did train


def test_array_adamw_resumes_bit_identically_from_its_state_dict() -> None:
    grads = _grads(8)
    straight = _params()
    opt = _fresh(straight)
    for g in grads[:3]:
        opt.step(g)
    saved = opt.state_dict()
    saved = {"state": saved["state"], "param_groups": json.loads(json.dumps(saved["param_groups"]))}
    resumed = {n: a.copy() for n, a in straight.items()}
    opt_resumed = _fresh(resumed)
    opt_resumed.load_state_dict(saved)
    for g in grads[3:]:
        opt.step(g)
        opt_resumed.step(g)
    for n in SHAPES:
        np.testing.assert_array_equal(resumed[n], straight[n])
        for k in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(opt_resumed.state[n][k], opt.state[n][k])
        assert opt_resumed.state[n]["step"] == opt.state[n]["step"]
    # the state dict holds copies: the steps after it did not change it
    assert float(saved["state"][0]["step"]) == 3.0


def test_array_adamw_rejects_a_state_dict_of_other_groups_and_bad_parameters() -> None:
    opt = _fresh(_params())
    opt.step(_grads(3)[0])
    saved = opt.state_dict()
    other = ArrayAdamW([{"params": ["w", "b", "c"], "lr": 1e-2, "weight_decay": 0.01}], _params())
    with pytest.raises(ValueError):
        other.load_state_dict(saved)
    with pytest.raises(ValueError):
        ArrayAdamW([{"params": ["w", "missing"], "lr": 1e-2}], _params())
    with pytest.raises(ValueError):
        ArrayAdamW([{"params": ["w"], "lr": 1e-2}], {"w": np.zeros((2, 2))})  # float64
    with pytest.raises(ValueError):
        ArrayAdamW([{"params": [], "lr": 1e-2}], _params())


def test_the_numpy_fine_tune_pieces_do_not_import_torch() -> None:
    code = """
import sys
import numpy as np
from headstart.plugins.finetune.adamw import ArrayAdamW
from headstart.plugins.finetune.pair_loss import pair_cosine_loss_np
emb = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
params = {"emb": emb}
opt = ArrayAdamW([{"params": ["emb"], "lr": 1e-3, "weight_decay": 0.01}], params)
loss, grad = pair_cosine_loss_np(emb, np.array([0, 1, 0, 1, 0, 1]))
opt.step({"emb": grad})
opt.load_state_dict(opt.state_dict())
print("torch" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "False"
