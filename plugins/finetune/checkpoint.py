"""Per-epoch fine-tuning checkpoints in one safetensors file, written atomically.

Tensors: ``model.<name>`` (current weights and buffers), ``best.<name>`` (the best epoch's),
``optim.<param index>.<state key>`` (AdamW moments and step counts), ``rng.torch`` and
``rng.cuda`` (RNG states). Metadata ``headstart`` (JSON): format, epoch, best epoch and score,
epochs without improvement, history, the optimiser's param groups, the grad scaler's state
and the run's identity (what a resume must match). No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headstart.sdk import FinetuneError

FILE = "last.safetensors"
FORMAT = "headstart-finetune-checkpoint-1"


def save_checkpoint(folder: Path, *, model: Any, best: dict[str, Any], optimizer: Any, scaler: Any,
                    state: dict[str, Any]) -> Path:
    """Write the checkpoint for the epoch just finished (replaces the previous one atomically)."""
    import torch
    from safetensors.torch import save

    from headstart.sdk import write_bytes_atomic

    tensors: dict[str, Any] = {}
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = value
    for name, value in best.items():
        tensors[f"best.{name}"] = value
    opt = optimizer.state_dict()
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {**state, "format": FORMAT, "param_groups": opt["param_groups"],
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    path = folder / FILE
    write_bytes_atomic(path, save(tensors, metadata={"headstart": json.dumps(meta)}))
    return path


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's metadata, or ``None`` when there is no checkpoint."""
    from safetensors import safe_open

    path = folder / FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["headstart"])
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise FinetuneError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}",
                            hint="delete the checkpoint folder to start over") from None
    if meta.get("format") != FORMAT:
        raise FinetuneError(f"checkpoint {path} has format {meta.get('format')!r}", hint="delete it to start over")
    return meta


def load_checkpoint(folder: Path, *, model: Any, optimizer: Any, scaler: Any,
                    device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model, optimiser, scaler and RNG in place; return (metadata, best weights on CPU)."""
    import torch
    from safetensors.torch import load_file

    meta = read_meta(folder)
    assert meta is not None
    tensors = load_file(str(folder / FILE))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta, best
