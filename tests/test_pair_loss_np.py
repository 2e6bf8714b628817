"""The numpy twin of the contrastive pair loss (plugins/finetune/pair_loss.py): ``pair_cosine_loss_np`` gives
``pair_cosine_loss``'s value and torch autograd's gradient (the hardness weights constant), for unit-norm rows
(encoder outputs) and unnormalised ones, with and without hardness, and for batches lacking positives or negatives.
"""

from __future__ import annotations

import numpy as np
import pytest

from headstart.plugins.finetune.pair_loss import pair_cosine_loss, pair_cosine_loss_np


def _torch_loss_and_grad(emb: np.ndarray, y: np.ndarray, hardness: float) -> tuple[float, np.ndarray]:
    import torch

    t = torch.from_numpy(emb.copy()).requires_grad_()
    loss = pair_cosine_loss(t, torch.from_numpy(y), hardness)
    loss.backward()
    return float(loss.detach()), t.grad.numpy()


def _case(seed: int, n: int, classes: int, unit: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 32)).astype(np.float32) * np.float32(3.0)
    if unit:
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), rng.integers(0, classes, n)


@pytest.mark.parametrize("hardness", [0.0, 1.0])
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("seed, n, classes", [(0, 4, 2), (1, 9, 2), (2, 16, 2), (3, 24, 2), (4, 6, 6), (5, 12, 6),
                                              (6, 24, 6)])
def test_pair_cosine_loss_np_is_torchs_value_and_gradient(seed: int, n: int, classes: int, unit: bool,
                                                          hardness: float) -> None:
    emb, y = _case(seed, n, classes, unit)
    loss, grad = pair_cosine_loss_np(emb, y, hardness)
    expected_loss, expected_grad = _torch_loss_and_grad(emb, y, hardness)
    assert isinstance(loss, float) and grad.dtype == np.float32 and grad.shape == emb.shape
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hardness", [0.0, 1.0])
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("y", [np.zeros(7, np.int64), np.arange(8)], ids=["one-class", "one-item-per-class"])
def test_pair_cosine_loss_np_without_negatives_or_positives(y: np.ndarray, unit: bool, hardness: float) -> None:
    emb, _ = _case(11, len(y), 2, unit)
    loss, grad = pair_cosine_loss_np(emb, y, hardness)
    expected_loss, expected_grad = _torch_loss_and_grad(emb, y, hardness)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_pair_cosine_loss_np_with_a_zero_row_is_torchs() -> None:
    """A zero embedding (F.normalize's clamped norm): the same value and gradient as torch."""
    emb, y = _case(12, 6, 2, False)
    emb[2] = 0.0
    loss, grad = pair_cosine_loss_np(emb, y, 1.0)
    expected_loss, expected_grad = _torch_loss_and_grad(emb, y, 1.0)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)
