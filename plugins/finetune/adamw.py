"""AdamW with torch's fused CPU kernel, without ``torch.optim``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` (and sympy) on its first ``add_param_group`` and on every
``step``: over a second on a CPU, for a few-shot fine-tune that trains in a few. :class:`FusedAdamW` makes the
update of ``torch.optim.AdamW(groups, fused=True)`` (the same kernel, ``torch._fused_adamw_``, the same
per-parameter state: ``step``, ``exp_avg``, ``exp_avg_sq``; bit-identical, tests/test_fewshot_cli.py) and keeps
its ``state_dict`` layout (state by parameter index, groups with their ``params`` indices), which the
checkpoints (checkpoint.py) store and restore. ``torch._fused_adamw_`` is a private operator: where a torch
build lacks it, the same update runs as plain tensor operations (:func:`adamw_update`, the rule of
``torch.optim.AdamW``; equal to the fused kernel within float rounding, tests/test_fewshot_cli.py).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default


class FusedAdamW:
    """``torch.optim.AdamW(groups, fused=True)`` for CPU fp32 parameters (no amsgrad, no maximize)."""

    def __init__(self, groups: Iterable[dict[str, Any]], fused: bool = True) -> None:
        self.param_groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(g["params"]),
                              "betas": tuple(g.get("betas", BETAS)), "eps": g.get("eps", EPS),
                              "weight_decay": g.get("weight_decay", WEIGHT_DECAY)} for g in groups]
        if not any(g["params"] for g in self.param_groups):
            raise ValueError("optimizer got an empty parameter list")
        self.fused = fused
        self.state: dict[Any, dict[str, Any]] = {}

    def _params(self) -> list[Any]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                states = [self.state.setdefault(p, {}) for p in params]
                for p, s in zip(params, states):
                    if not s:
                        s.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p))
                steps = [s["step"] for s in states]
                for step in steps:
                    step.add_(1)
                fused = getattr(torch, "_fused_adamw_", None) if self.fused else None
                if fused is None:
                    for p, s in zip(params, states):
                        adamw_update(p, p.grad, s, group)
                    continue
                fused(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                                    [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"],
                                    beta1=group["betas"][0], beta2=group["betas"][1],
                                    weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                                    grad_scale=None, found_inf=None)

    def state_dict(self) -> dict[str, Any]:
        index = {id(p): i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "betas": list(g["betas"]),
                           "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("loaded state dict has a different number of parameters or groups")
        params = self._params()
        for own, saved in zip(self.param_groups, groups):
            own.update({k: v for k, v in saved.items() if k != "params"}, betas=tuple(saved.get("betas", BETAS)))
        self.state = {}
        for index, entry in state_dict["state"].items():
            p = params[int(index)]
            self.state[p] = {k: (v.detach().clone().to(dtype=p.dtype) if k != "step" else v.detach().clone().float())
                             for k, v in entry.items()}


def adamw_update(param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One AdamW step of one parameter in plain tensor operations (``state["step"]`` already counts it)."""
    beta1, beta2 = group["betas"]
    step = float(state["step"])
    param.mul_(1 - group["lr"] * group["weight_decay"])
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])
    param.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** step))
