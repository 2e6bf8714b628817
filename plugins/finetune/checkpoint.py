"""Per-epoch fine-tuning checkpoints in one safetensors file, written atomically.

Tensors: ``model.<name>`` (current weights and buffers), ``best.<name>`` (the best epoch's),
``optim.<param index>.<state key>`` (AdamW moments and step counts), ``rng.torch`` and
``rng.cuda`` (RNG states). Metadata ``headstart`` (JSON): format, epoch, best epoch and score,
epochs without improvement, history, the optimiser's param groups, the grad scaler's state
and the run's identity (what a resume must match). No pickle anywhere.

A fine-tune that trains numpy arrays (a backbone's numpy twin, ``ArrayAdamW``) writes the same layout without
torch (:func:`array_checkpoint_chunks`, :func:`load_array_checkpoint`); it draws its randomness from seeds
derived from the run's seed and position, so it stores no RNG state.
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
    from headstart.sdk import write_bytes_atomic

    path = folder / FILE
    write_bytes_atomic(path, checkpoint_bytes(model=model, best=best, optimizer=optimizer, scaler=scaler, state=state))
    return path


def checkpoint_bytes(*, model: Any, best: dict[str, Any], optimizer: Any, scaler: Any, state: dict[str, Any]) -> bytes:
    """The checkpoint file's content now (a snapshot: training may go on while it is written)."""
    import torch
    from safetensors.torch import save

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
    # no copies: ``save`` serialises into new bytes right here, so training may change the tensors afterwards
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {**state, "format": FORMAT, "param_groups": opt["param_groups"],
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    return save(tensors, metadata={"headstart": json.dumps(meta)})


def array_checkpoint_chunks(*, weights: dict[str, Any], optimizer_state: dict[str, Any],
                            state: dict[str, Any]) -> list[Any]:
    """:func:`checkpoint_bytes` for numpy arrays: ``weights`` (name -> array) and an ``ArrayAdamW.state_dict()``,
    as the chunks of a safetensors file (:func:`safetensors_chunks`; the weights copied: training goes on)."""
    import numpy as np

    tensors = {f"model.{name}": np.array(value, order="C") for name, value in weights.items()}
    for index, entry in optimizer_state["state"].items():  # state_dict() holds copies already
        for key, value in entry.items():
            tensors[f"optim.{index}.{key}"] = np.asarray(value, order="C")  # keeps 0-d steps 0-d
    meta = {**state, "format": FORMAT, "param_groups": optimizer_state["param_groups"], "scaler": None}
    return safetensors_chunks(tensors, {"headstart": json.dumps(meta)})


#: safetensors' dtype names of the numpy dtypes a checkpoint holds
_SAFETENSORS_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "int64": "I64", "int32": "I32",
                       "uint8": "U8", "bool": "BOOL"}


def safetensors_chunks(tensors: dict[str, Any], metadata: dict[str, str]) -> list[Any]:
    """A safetensors file as chunks to write one after the other (``write_bytes_atomic`` takes them): the 8-byte
    header length, the JSON header (padded with spaces to a multiple of 8 bytes, as safetensors writes it), then
    each array's memory in header order, not copied. ``safetensors.numpy.save`` returns one ``bytes`` instead,
    after two copies of every array (0.02-0.09 s for a 42 MB checkpoint here, on the training thread)."""
    import struct

    header: dict[str, Any] = {"__metadata__": metadata}
    chunks: list[Any] = []
    offset = 0
    for name, array in tensors.items():
        dtype = _SAFETENSORS_DTYPES.get(array.dtype.name)
        if dtype is None or not array.flags.c_contiguous:
            raise ValueError(f"tensor {name!r}: {array.dtype} {'' if array.flags.c_contiguous else 'strided '}"
                             "cannot be written")
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        chunks.append(memoryview(array.reshape(-1)).cast("B"))
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return [struct.pack("<Q", len(encoded)), encoded, *chunks]


def load_array_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(metadata, weights, optimiser state dict) of the checkpoint in ``folder``, as numpy arrays."""
    from safetensors.numpy import load_file

    meta = read_meta(folder)
    assert meta is not None
    tensors = load_file(str(folder / FILE))
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return meta, weights, {"state": state, "param_groups": meta["param_groups"]}


class BackgroundWriter:
    """Writes one checkpoint at a time on a thread (the fsync of tens of MB overlaps the next epoch).

    :meth:`wait` returns once the last submitted checkpoint is durable (and raises its error)."""

    def __init__(self, path: Path) -> None:
        self.path, self.thread, self.error = path, None, None

    def submit(self, data: bytes | list[Any]) -> None:
        import threading

        from headstart.sdk import write_bytes_atomic

        self.wait()

        def write() -> None:
            try:
                write_bytes_atomic(self.path, data)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the training thread by wait()
                self.error = exc

        self.thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's metadata, or ``None`` when there is no checkpoint."""
    from safetensors import safe_open

    path = folder / FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
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
    if "rng.torch" in tensors:  # absent where a numpy fine-tune wrote it (its randomness is seeded by position)
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta, best
