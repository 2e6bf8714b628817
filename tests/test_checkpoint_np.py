"""The numpy body's checkpoint file, written as chunks (``safetensors_chunks``): safetensors reads it back as
safetensors' own writer would have written it, and it is a snapshot of the weights at the call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save

from headstart.plugins.finetune.checkpoint import array_checkpoint_chunks, safetensors_chunks
from headstart.sdk import write_bytes_atomic


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"model.a": rng.normal(size=(3, 5)).astype(np.float32), "optim.0.step": np.array(7.0, np.float32),
            "model.ids": rng.integers(0, 9, size=(4,)), "optim.0.exp_avg": rng.normal(size=(11,)).astype(np.float32),
            "flag": np.array([True, False])}


def test_safetensors_reads_the_chunks_as_it_reads_its_own_file(tmp_path: Path) -> None:
    tensors, meta = _tensors(), {"headstart": json.dumps({"epoch": 2})}
    ours = b"".join(bytes(c) for c in safetensors_chunks(tensors, meta))
    theirs = save(tensors, metadata=meta)
    (tmp_path / "ours.safetensors").write_bytes(ours)
    (tmp_path / "theirs.safetensors").write_bytes(theirs)
    header_length = int.from_bytes(ours[:8], "little")
    assert header_length % 8 == 0 and len(ours) == len(theirs)
    for name in ("ours", "theirs"):
        loaded = load_file(str(tmp_path / f"{name}.safetensors"))
        assert set(loaded) == set(tensors)
        for key, value in tensors.items():
            assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
            np.testing.assert_array_equal(loaded[key], value)
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="numpy") as fh:
            assert fh.metadata() == meta


def test_the_checkpoint_is_a_snapshot_of_the_weights(tmp_path: Path) -> None:
    weight = np.ones((4, 4), np.float32)
    chunks = array_checkpoint_chunks(weights={"w": weight}, optimizer_state={"state": {}, "param_groups": []},
                                     state={"epoch": 1})
    weight += 1.0  # the next epoch trains while the chunks are written
    write_bytes_atomic(tmp_path / "last.safetensors", chunks)
    np.testing.assert_array_equal(load_file(str(tmp_path / "last.safetensors"))["model.w"], np.ones((4, 4)))


def test_an_array_it_cannot_write_is_named() -> None:
    with pytest.raises(ValueError, match="'s'.*cannot be written"):
        safetensors_chunks({"s": np.array(["x"])}, {})
    with pytest.raises(ValueError, match="'t'.*strided"):
        safetensors_chunks({"t": np.ones((4, 4), np.float32)[:, ::2]}, {})
