"""AdamW with torch's fused CPU kernel, without ``torch.optim``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` (and sympy) on its first ``add_param_group`` and on every
``step``: over a second on a CPU, for a few-shot fine-tune that trains in a few. :class:`FusedAdamW` makes the
update of ``torch.optim.AdamW(groups, fused=True)`` (the same kernel, ``torch._fused_adamw_``, the same
per-parameter state: ``step``, ``exp_avg``, ``exp_avg_sq``; bit-identical, tests/test_fewshot_cli.py) and keeps
its ``state_dict`` layout (state by parameter index, groups with their ``params`` indices), which the
checkpoints (checkpoint.py) store and restore. ``torch._fused_adamw_`` is a private operator: where a torch
build lacks it, the same update runs as plain tensor operations (:func:`adamw_update`, the rule of
``torch.optim.AdamW``; equal to the fused kernel within float rounding, tests/test_fewshot_cli.py).

:class:`ArrayAdamW` is the same rule (:func:`adamw_update`) over named numpy float32 arrays, updated in place
without torch, for a fine-tune that computes its gradients in numpy; its ``state_dict`` has FusedAdamW's layout
with numpy arrays (equal to ``torch.optim.AdamW(foreach=False)`` within float rounding, tests/test_adamw_np.py).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default
CHUNK = 65536  # ArrayAdamW updates this many elements at a time


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


class ArrayAdamW:
    """AdamW (the rule of :func:`adamw_update`) over named numpy float32 arrays, updated in place."""

    def __init__(self, groups: Iterable[dict[str, Any]], params: dict[str, np.ndarray]) -> None:
        self.param_groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(g["params"]),
                              "betas": tuple(g.get("betas", BETAS)), "eps": g.get("eps", EPS),
                              "weight_decay": g.get("weight_decay", WEIGHT_DECAY)} for g in groups]
        names = self._names()
        if not names:
            raise ValueError("optimizer got an empty parameter list")
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"groups name parameters that are not given: {missing}")
        wrong = [n for n in names if not (isinstance(params[n], np.ndarray) and params[n].dtype == np.float32)]
        if wrong:
            raise ValueError(f"parameters must be float32 numpy arrays: {wrong}")
        strided = [n for n in names if not params[n].flags.c_contiguous]
        if strided:
            raise ValueError(f"parameters must be C-contiguous (updated in place through flat views): {strided}")
        self.params = params
        self.state: dict[str, dict[str, Any]] = {}
        self._scratch = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32))

    def _names(self) -> list[str]:
        return [n for g in self.param_groups for n in g["params"]]

    def step(self, grads: dict[str, np.ndarray]) -> None:
        """One step of every parameter that has a gradient in ``grads`` (the others untouched)."""
        f32 = np.float32
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for name in group["params"]:
                grad = grads.get(name)
                if grad is None:
                    continue
                param = self.params[name]
                if grad.shape != param.shape:
                    raise ValueError(f"gradient of {name!r} has shape {grad.shape}, not {param.shape}")
                state = self.state.get(name)
                if state is None:
                    state = self.state[name] = {"step": 0.0, "exp_avg": np.zeros_like(param),
                                                "exp_avg_sq": np.zeros_like(param)}
                state["step"] += 1.0
                step = state["step"]
                scalars = (f32(1 - lr * group["weight_decay"]), f32(1 - beta1), f32(beta2), f32(1 - beta2),
                           f32(math.sqrt(1 - beta2 ** step)), f32(group["eps"]), f32(-lr / (1 - beta1 ** step)))
                flat = [a.reshape(-1) for a in (param, np.ascontiguousarray(grad, dtype=f32), state["exp_avg"],
                                                 state["exp_avg_sq"])]
                for start in range(0, param.size, CHUNK):  # a chunk's temporaries stay in cache
                    stop = min(start + CHUNK, param.size)
                    _adamw_chunk(*(a[start:stop] for a in flat), *(s[:stop - start] for s in self._scratch),
                                 *scalars)

    def state_dict(self) -> dict[str, Any]:
        """FusedAdamW's layout (state by parameter index, groups with their indices), numpy arrays (copies)."""
        index = {n: i for i, n in enumerate(self._names())}
        groups, start = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "betas": list(g["betas"]),
                           "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        state = {index[n]: {"step": np.array(s["step"], np.float32), "exp_avg": s["exp_avg"].copy(),
                            "exp_avg_sq": s["exp_avg_sq"].copy()} for n, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (arrays copied); ValueError when the groups do not match."""
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("loaded state dict has a different number of parameters or groups")
        names = self._names()
        state: dict[str, dict[str, Any]] = {}
        for index, entry in state_dict["state"].items():
            name = names[int(index)]
            shape = self.params[name].shape
            moments = {k: np.array(entry[k], dtype=np.float32, order="C") for k in ("exp_avg", "exp_avg_sq")}
            if any(m.shape != shape for m in moments.values()):
                raise ValueError(f"loaded state of {name!r} has shape {moments['exp_avg'].shape}, not {shape}")
            state[name] = {"step": float(np.asarray(entry["step"])), **moments}
        for own, saved in zip(self.param_groups, groups):
            own.update({k: v for k, v in saved.items() if k != "params"}, betas=tuple(saved.get("betas", BETAS)))
        self.state = state


def _adamw_chunk(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, a: np.ndarray,
                 b: np.ndarray, decay: np.float32, w1: np.float32, beta2: np.float32, w2: np.float32,
                 bc2_sqrt: np.float32, eps: np.float32, step_size: np.float32) -> None:
    """:func:`adamw_update`'s operations, in their order, on float32 arrays in place (``a``, ``b``: scratch)."""
    if decay != 1:  # param.mul_(1 - lr * weight_decay); times 1.0 is the identity
        np.multiply(param, decay, out=param)
    np.subtract(grad, exp_avg, out=a)  # exp_avg.lerp_(grad, 1 - beta1)
    np.multiply(a, w1, out=a)
    np.add(exp_avg, a, out=exp_avg)
    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    np.multiply(grad, w2, out=a)
    np.multiply(a, grad, out=a)
    np.add(exp_avg_sq, a, out=exp_avg_sq)
    np.sqrt(exp_avg_sq, out=a)  # denom = exp_avg_sq.sqrt() / sqrt(bias_correction2) + eps
    np.divide(a, bc2_sqrt, out=a)
    np.add(a, eps, out=a)
    np.multiply(exp_avg, step_size, out=b)  # param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    np.divide(b, a, out=b)
    np.add(param, b, out=param)
