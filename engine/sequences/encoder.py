"""A small event-sequence encoder in PyTorch, made to be exported to ONNX.

Per step: the standardised numeric fields and an embedding of each categorical id; a forward GRU over the
steps (a step's state never depends on the padding after it, so an item alone and the same item padded in a
batch give the same vector: the export gate checks it). Next-event heads predict step ``t+1`` from the state at
``t``; their error on each step is its **surprise** (squared error of the standardised numbers plus the negative
log-likelihood of each categorical id), the quantity :mod:`.pretrain` minimises.

The embedding (one vector per item, pooled in the graph) is the item's **surprise profile**: for each value of
an event (every number, every categorical column), its surprise at the last event, the highest and the mean over
the last 4 events and over the last 8, and the mean over the window, and log(1 + the number of events):
``(2 + 2 * len(recent)) * width + 1`` values. A pretrained encoder knows what an account usually does next, so it
is surprised where single transactions look normal; a randomly initialised one is not. (Pooling the GRU states
themselves was measured too: on the fraud example they dilute the signal a linear head finds with few labels; see
docs/sequences.md.) With ``objective="contrastive"`` the encoder is trained to match two views of the same account
instead, and its embedding is those pooled states (the state after the last event and the mean state):
``2 * hidden`` values.

Either embedding leaves the graph **standardised** with the pretraining pool's statistics (``out_mean``,
``out_std``, measured by :mod:`.pretrain` on the pool with the best weights): a surprise in nats and one in
squared standard deviations are then on one scale, which is what a head's L2 penalty or a k-NN distance assumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

UNSEEN_ID = 1
RECENT = (4, 8)  # the recent stretches (events) whose highest and mean surprise are features
PROJECTION = 32  # width of the contrastive projection


@dataclass(frozen=True)
class EncoderConfig:
    n_numeric: int
    categorical_sizes: tuple[int, ...] = ()  # ids per categorical column (vocabulary size + 2)
    hidden: int = 64
    embedding: int = 8
    mean: tuple[float, ...] = field(default=())  # per numeric field (standardisation)
    std: tuple[float, ...] = field(default=())
    objective: str = "next-event"  # or "contrastive": the embedding is then the pooled GRU states
    recent: tuple[int, ...] = RECENT
    out_mean: tuple[float, ...] = field(default=())  # per embedding value, on the pool (empty: not standardised)
    out_std: tuple[float, ...] = field(default=())

    @property
    def width(self) -> int:
        return self.n_numeric + len(self.categorical_sizes)

    @property
    def dim(self) -> int:
        return 2 * self.hidden if self.objective == "contrastive" else (2 + 2 * len(self.recent)) * self.width + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EncoderConfig":
        data = {"recent": (4,), **data}  # encoders saved before the recent stretches were configurable: the last 4
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def build_encoder(config: EncoderConfig, seed: int = 0) -> Any:
    """The ``EventEncoder`` module for ``config``, initialised from ``seed``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class EventEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = config
            self.register_buffer("mean", torch.tensor(c.mean or [0.0] * c.n_numeric, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(c.std or [1.0] * c.n_numeric, dtype=torch.float32).clamp(min=1e-6))
            # from the config, not the weights: the statistics are measured after training, with the best weights
            self.register_buffer("out_mean", torch.tensor(c.out_mean or [0.0] * c.dim, dtype=torch.float32),
                                 persistent=False)
            self.register_buffer("out_std", torch.tensor(c.out_std or [1.0] * c.dim, dtype=torch.float32).clamp(
                min=1e-6), persistent=False)
            self.embeddings = nn.ModuleList(nn.Embedding(n, c.embedding) for n in c.categorical_sizes)
            self.gru = nn.GRU(c.n_numeric + c.embedding * len(c.categorical_sizes), c.hidden, batch_first=True)
            self.next_numeric = nn.Linear(c.hidden, c.n_numeric) if c.n_numeric else None
            self.next_categorical = nn.ModuleList(nn.Linear(c.hidden, n) for n in c.categorical_sizes)
            if c.objective == "contrastive":  # the projection the contrastive loss compares (not in the graph)
                self.projection = nn.Sequential(nn.Linear(2 * c.hidden, c.hidden), nn.ReLU(),
                                                nn.Linear(c.hidden, PROJECTION))

        def ids(self, x: Any, j: int, size: int) -> Any:
            ids = x[..., config.n_numeric + j].long()
            return torch.where((ids < 0) | (ids >= size), torch.full_like(ids, UNSEEN_ID), ids)

        def states(self, x: Any) -> Any:
            c = config
            parts = [(x[..., : c.n_numeric] - self.mean) / self.std] if c.n_numeric else []
            parts += [emb(self.ids(x, j, emb.num_embeddings)) for j, emb in enumerate(self.embeddings)]
            out, _ = self.gru(torch.cat(parts, dim=-1))
            return out

        def surprise_parts(self, states: Any, x: Any) -> Any:
            """(B, T, width): per value of step t, the error of predicting it from the state at t-1: the squared
            error of each standardised number, the negative log-likelihood of each categorical id (0 at t=0).
            The states are shifted by one step (a zero state first), so no tensor is ever empty."""
            c = config
            before = torch.cat([states[:, :1] * 0.0, states[:, :-1]], dim=1)
            parts = []
            if c.n_numeric:
                wanted = (x[..., : c.n_numeric] - self.mean) / self.std
                parts.append((self.next_numeric(before) - wanted) ** 2)
            for j, head in enumerate(self.next_categorical):
                logp = torch.log_softmax(head(before), dim=-1)
                parts.append(-logp.gather(-1, self.ids(x, j, head.out_features).unsqueeze(-1)))
            first = (torch.arange(x.shape[1], device=x.device) > 0).to(x.dtype).view(1, -1, 1)
            return torch.cat(parts, dim=-1) * first

        def surprise(self, states: Any, x: Any) -> Any:
            """(B, T): the total surprise of each step (what pretraining minimises)."""
            return self.surprise_parts(states, x).sum(dim=-1)

        def pooled_states(self, x: Any, mask: Any) -> Any:
            """(B, 2 * hidden): the state after the last real step and the mean state over the real steps."""
            m = mask.to(x.dtype)
            states = self.states(x)
            lengths = m.sum(dim=1).clamp(min=1.0)
            index = (lengths - 1).long().view(-1, 1, 1).expand(-1, 1, states.shape[-1])
            last = states.gather(1, index).squeeze(1)
            mean = (states * m.unsqueeze(-1)).sum(dim=1) / lengths.unsqueeze(-1)
            return torch.cat([last, mean], dim=1)

        def forward(self, x: Any, mask: Any) -> Any:
            return (self.raw_embedding(x, mask) - self.out_mean) / self.out_std

        def raw_embedding(self, x: Any, mask: Any) -> Any:
            """The embedding before standardisation: pooled states (contrastive) or the surprise profile."""
            if config.objective == "contrastive":
                return self.pooled_states(x, mask)
            m = mask.to(x.dtype)
            s = self.surprise_parts(self.states(x), x) * m.unsqueeze(-1)
            lengths = m.sum(dim=1).clamp(min=1.0)
            last_index = (lengths - 1).long()
            views = [s.gather(1, last_index.view(-1, 1, 1).expand(-1, 1, s.shape[-1])).squeeze(1)]
            steps = torch.arange(s.shape[1], device=s.device).unsqueeze(0).to(s.dtype)
            for n in config.recent:
                recent = ((steps > (lengths.unsqueeze(1) - 1 - n)).to(s.dtype) * m).unsqueeze(-1)
                views += [(s * recent).max(dim=1).values, (s * recent).sum(dim=1) / recent.sum(dim=1).clamp(min=1.0)]
            views += [s.sum(dim=1) / lengths.unsqueeze(-1), torch.log1p(lengths).unsqueeze(-1)]
            return torch.cat(views, dim=1)

    return EventEncoder()
