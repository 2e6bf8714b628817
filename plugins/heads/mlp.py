"""``mlp``: a small multi-layer perceptron in PyTorch (Adam, dropout, early stopping on validation).

Out of core: each epoch shuffles the training rows, reads them chunk by chunk in that shuffled order
(a whole number of minibatches per chunk) and steps through the chunk's minibatches, so the minibatches
are those of an in-memory run with the same seed; the validation loss is summed chunk by chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.sdk import class_weights, FeatureMatrix, Head, HeadSpec, hookimpl, resolve_device


class MLPHead(Head):
    """Hidden layers (ReLU, dropout) → softmax; stops when validation loss stops improving and
    keeps the best epoch's weights. ``hidden``: layer widths, e.g. ``(512,)`` or ``(512, 256)``."""

    streams_features = True

    def __init__(self, *, hidden: Any = (512,), dropout: float = 0.2, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 256, max_epochs: int = 100, patience: int = 5, val_fraction: float = 0.1,
                 class_weight: Any = None, device: str = "cpu", seed: int = 0) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.class_weight = class_weight
        self.device = device
        self.seed = seed

    @classmethod
    def _param_constraints(cls) -> dict[str, list[Any]]:
        from numbers import Integral, Real

        from headstart.sdk import Interval, Options

        return {"dropout": [Interval(Real, 0, 1, closed="left")], "lr": [Interval(Real, 0, None, closed="neither")],
                "weight_decay": [Interval(Real, 0, None, closed="left")],
                "batch_size": [Interval(Integral, 1, None, closed="left")],
                "max_epochs": [Interval(Integral, 1, None, closed="left")],
                "patience": [Interval(Integral, 1, None, closed="left")],
                "val_fraction": [Interval(Real, 0, 1, closed="left")],
                "class_weight": [None, Options({"balanced"}), dict], "device": [str],
                "seed": [Interval(Integral, 0, None, closed="left")]}

    def _check_params(self) -> None:
        hidden = [self.hidden] if isinstance(self.hidden, int) else self.hidden
        if not isinstance(hidden, (list, tuple)) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ValueError(f"The 'hidden' parameter of MLPHead must be a positive int or a tuple of positive "
                             f"ints (layer widths). Got {self.hidden!r} instead.")

    def memory_estimate(self, n_features: int, n_classes: int) -> int:
        """Bytes training needs: weights, gradients, two AdamW moments and the best-epoch copy (5 float32
        copies of every parameter) plus a batch's activations (forward and backward)."""
        hidden = [self.hidden] if isinstance(self.hidden, int) else list(self.hidden)
        sizes = [int(n_features), *[int(h) for h in hidden], int(n_classes)]
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        return 4 * (5 * n_params + 3 * int(self.batch_size) * sum(sizes))

    def _layers(self) -> list[int]:
        hidden = [self.hidden] if isinstance(self.hidden, int) else list(self.hidden)
        return [self.n_features_in_, *[int(h) for h in hidden], len(self.classes_)]

    def _net(self) -> Any:
        import torch

        sizes = self._layers()
        layers: list[Any] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Dropout(self.dropout)]
        layers.append(torch.nn.Linear(sizes[-2], sizes[-1]))
        return torch.nn.Sequential(*layers)

    def _fit(self, X: FeatureMatrix, y_idx: np.ndarray) -> None:
        import torch

        from headstart.sdk import stratified_split

        device = resolve_device(self.device)
        torch.manual_seed(self.seed)
        split = stratified_split(y_idx, self.val_fraction, self.seed)
        train, val = split.train, split.val
        net = self._net().to(device)
        cw = torch.from_numpy(class_weights(self.class_weight, y_idx, self.classes_)).to(device)
        yt = torch.from_numpy(y_idx).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = torch.nn.CrossEntropyLoss(weight=cw)
        summed = torch.nn.CrossEntropyLoss(weight=cw, reduction="sum")
        gen = torch.Generator().manual_seed(self.seed)
        batch = int(self.batch_size)
        per_chunk = max(1, X.rows_per_chunk() // batch) * batch  # whole minibatches per chunk read
        val_rows = X.subset(val)
        val_weight = float(cw[yt[torch.from_numpy(val)]].sum()) if len(val) else 0.0
        best, best_state, stale, epochs = float("inf"), None, 0, 0
        for epoch in range(self.max_epochs):
            net.train()
            order = train[torch.randperm(len(train), generator=gen).numpy()]
            for start in range(0, len(order), per_chunk):
                rows = order[start:start + per_chunk]
                block, labels = torch.from_numpy(X.take(rows)).to(device), yt[torch.from_numpy(rows).to(device)]
                for first in range(0, len(rows), batch):
                    opt.zero_grad()
                    loss_fn(net(block[first:first + batch]), labels[first:first + batch]).backward()
                    opt.step()
            epochs = epoch + 1
            if len(val) == 0:
                continue
            net.eval()
            total = 0.0
            with torch.no_grad():
                for positions, part in val_rows.chunks():
                    rows_t = torch.from_numpy(val[positions]).to(device)
                    total += float(summed(net(torch.from_numpy(part).to(device)), yt[rows_t]))
            val_loss = total / val_weight
            if val_loss < best - 1e-4:
                best, stale = val_loss, 0
                best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        self.net_ = net.cpu().eval()
        self.n_epochs_ = epochs
        self.best_val_loss_ = best if best_state is not None else None

    def _proba(self, X: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.softmax(self.net_(torch.from_numpy(X)), dim=1).numpy()

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {k: v.numpy() for k, v in self.net_.state_dict().items()}
        return arrays, {"classes": self.classes_.tolist(), "n_features_in": self.n_features_in_,
                        "n_epochs": self.n_epochs_, "best_val_loss": self.best_val_loss_}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        import torch

        self.classes_ = np.asarray(meta["classes"])
        self.n_features_in_ = int(meta["n_features_in"])
        net = self._net()
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        self.net_ = net.eval()
        self.n_epochs_ = meta["n_epochs"]
        self.best_val_loss_ = meta["best_val_loss"]


@hookimpl
def register_heads(register):
    register(HeadSpec(
        name="mlp",
        factory=MLPHead,
        description="multi-layer perceptron (PyTorch, AdamW, dropout, early stopping on validation)",
    ))
