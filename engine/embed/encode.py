"""The one encode step both engines run: prepared payloads in, vectors and error records out.

The local pipeline (:mod:`headstart.engine.embed.pipeline`) and the Ray worker
(:mod:`headstart.engine.distributed.worker`) call :func:`encode_prepared`; the rules for bad items live
only here: a payload the preprocessor refused gets a ``preprocess`` error record, a row the backbone
turned into NaN/Inf an ``encode`` record, and a text cut at the backbone's token limit is counted as
truncated (its vector is kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import HeadstartError
from .job import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE_CUDA, MAX_TOKENS_PER_BATCH, error_record

NAN_REASON = "the backbone produced NaN/Inf for this item"


@dataclass
class Encoded:
    """What :func:`encode_prepared` returns: the vectors of the items that succeeded, in input order."""

    keys: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None  # (len(keys), dim) float32, or None when nothing succeeded
    errors: list[Any] = field(default_factory=list)  # ErrorRecord per failed item (stage preprocess/encode)
    truncated: int = 0
    seconds: float = 0.0  # encoder time


def batch_settings(modality: str, device: str, batch_size: int | None) -> tuple[int, int | None]:
    """(items per batch, padded tokens per text batch or None) for ``modality`` on ``device``."""
    size = batch_size or (DEFAULT_BATCH_SIZE_CUDA if device == "cuda" else DEFAULT_BATCH_SIZE)[modality]
    return size, (MAX_TOKENS_PER_BATCH[device] if modality == "text" else None)


def failure_reason(exc: BaseException) -> str:
    """The message an error record keeps for an exception a preprocessor returned for one item."""
    return exc.message if isinstance(exc, HeadstartError) else f"{type(exc).__name__}: {exc}"


def encode_prepared(slices: Iterable[tuple[int, Sequence[Any]]], keys: Sequence[str], refs: Sequence[str],
                    preprocessor: Any, run: Callable[[dict[str, np.ndarray]], np.ndarray], dim: int,
                    batch_size: int, max_tokens: int | None, advance: Callable[[int], Any] | None = None) -> Encoded:
    """Encode prepared items given as ``(offset, prepared items)`` slices (offsets index ``keys``/``refs``).

    Each prepared item is what ``preprocessor.prepare_many`` returned: a prepared payload, or the
    exception that refused it. ``run`` maps a collated batch to its ``(n, dim)`` output;
    ``advance(n)`` is called after each encoded batch (a progress bar).
    """
    from .batching import length_sorted_batches

    out = Encoded()
    parts: list[np.ndarray] = []
    for offset, prepared in slices:
        good = []
        for i, p in enumerate(prepared, start=offset):
            if isinstance(p, BaseException):
                out.errors.append(error_record(keys[i], refs[i], failure_reason(p), "preprocess"))
            else:
                good.append(i)
                out.truncated += bool(preprocessor.truncated(p))
        if not good:
            continue
        items = [prepared[i - offset] for i in good]
        vectors = np.empty((len(items), dim), dtype=np.float32)
        t = time.perf_counter()
        for batch in length_sorted_batches(items, preprocessor.length, batch_size, max_tokens):
            vectors[batch] = run(preprocessor.collate([items[i] for i in batch]))
            if advance is not None:
                advance(len(batch))
        out.seconds += time.perf_counter() - t
        finite = np.isfinite(vectors).all(axis=1)
        for row, i in enumerate(good):
            if finite[row]:
                out.keys.append(keys[i])
                out.refs.append(refs[i])
            else:
                out.truncated -= bool(preprocessor.truncated(items[row]))
                out.errors.append(error_record(keys[i], refs[i], NAN_REASON, "encode"))
        parts.append(vectors[finite])
    out.vectors = np.concatenate(parts) if parts else None
    return out
