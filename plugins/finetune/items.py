"""The labelled items a finetuner trains on, prepared and collated once."""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.sdk import FinetuneError


def collated_items(spec: Any, items: list[Any]) -> dict[str, np.ndarray]:
    """The backbone's preprocessing of every item, collated into one padded batch of numpy arrays; an item that
    cannot be prepared now (it was embedded before) is an error naming its row."""
    from headstart.sdk import make_preprocessor

    pre = make_preprocessor(spec)
    prepared = pre.prepare_many(items)
    for row, p in enumerate(prepared):
        if isinstance(p, Exception):
            raise FinetuneError(f"labelled item {row} could not be prepared: {p}",
                                hint="the source changed since it was embedded; run again")
    return pre.collate(prepared)
