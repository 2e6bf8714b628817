"""Contrastive losses on a batch of L2-normalised embeddings and the held-out score used to stop training.

``pair_cosine_loss``: SetFit's CosineSimilarityLoss (cosine of a pair regressed onto 1 for the same
class, 0 for different classes) over *every* pair in the batch at once instead of sampled pairs,
positives and negatives weighted equally, each pair's squared error raised by its hardness (pairs
the model gets most wrong count most). ``centroid_scores``: accuracy and log-loss of held-out items
against the class centroids of the training items (a nearest-class-mean classifier, which needs no
fitting and works with a handful of items per class).
``pair_cosine_loss_np``: the same loss and its gradient in numpy (analytic backward), for a fine-tune without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CENTROID_TEMPERATURE = 0.05


def pair_cosine_loss(emb: Any, y: Any, hardness: float = 1.0) -> Any:
    """Mean of (cos(a, b) - same(a, b))^2 over all pairs, positives and negatives half each, hard pairs up-weighted."""
    import torch

    emb = torch.nn.functional.normalize(emb, dim=1)
    cos = emb @ emb.T
    same = (y[:, None] == y[None, :]).to(cos.dtype)
    off = ~torch.eye(len(y), dtype=torch.bool, device=emb.device)
    err = (cos - same) ** 2
    weight = 1.0 + hardness * err.detach() / err.detach()[off].mean().clamp(min=1e-12)
    terms = []
    for mask in (off & (same > 0), same == 0):
        if mask.any():
            terms.append((weight[mask] * err[mask]).sum() / weight[mask].sum())
    return torch.stack(terms).mean()


def pair_cosine_loss_np(emb: np.ndarray, y: np.ndarray, hardness: float = 1.0) -> tuple[float, np.ndarray]:
    """``pair_cosine_loss`` without torch: (loss, d loss / d emb as float32), the weights constant as there."""
    emb = np.asarray(emb, dtype=np.float32)
    y = np.asarray(y)
    norm = np.sqrt(np.einsum("ij,ij->i", emb, emb, dtype=np.float32))[:, None]
    safe = np.maximum(norm, np.float32(1e-12))  # F.normalize's eps
    unit = emb / safe
    cos = unit @ unit.T
    same = (y[:, None] == y[None, :]).astype(np.float32)
    off = ~np.eye(len(y), dtype=bool)
    diff = cos - same
    err = diff * diff
    if not off.any():
        raise ValueError("pair_cosine_loss_np needs at least two items")
    weight = np.float32(1.0) + np.float32(hardness) * err / np.maximum(err[off].mean(), np.float32(1e-12))
    masks = [m for m in (off & (same > 0), same == 0) if m.any()]
    loss, d_err = 0.0, np.zeros_like(err)
    for mask in masks:
        total = weight[mask].sum()
        loss += float((weight[mask] * err[mask]).sum() / total)
        d_err[mask] = weight[mask] / (total * np.float32(len(masks)))
    d_cos = np.float32(2.0) * diff * d_err
    d_unit = (d_cos + d_cos.T) @ unit
    # normalize backward: through the norm only where it was not clamped
    radial = np.where(norm >= np.float32(1e-12), unit * np.einsum("ij,ij->i", unit, d_unit)[:, None], np.float32(0.0))
    return loss / len(masks), ((d_unit - radial) / safe).astype(np.float32, copy=False)


def centroid_scores(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray,
                    n_classes: int) -> tuple[float, float, np.ndarray]:
    """(accuracy, log-loss, predicted class indices) of ``test_emb`` against the classes' mean embeddings."""
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    centroids = np.zeros((n_classes, train_emb.shape[1]), np.float64)
    present = np.zeros(n_classes, bool)
    for c in range(n_classes):
        rows = train_y == c
        if rows.any():
            centroids[c], present[c] = train_emb[rows].mean(0), True
    logits = unit(test_emb.astype(np.float64)) @ unit(centroids).T / CENTROID_TEMPERATURE
    logits[:, ~present] = -np.inf
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    pred = log_p.argmax(1)
    loss = float(-np.mean(np.maximum(log_p[np.arange(len(test_y)), test_y], -50.0)))
    return float(np.mean(pred == test_y)), loss, pred
