"""``.npy`` reader: one numeric item per row of the first axis, memory-mapped (never loaded whole).

An ``(N, ...)`` array gives N items of shape ``(...)``; the content key hashes each row's dtype,
shape and bytes. Object arrays are refused (they would need pickle). No labels.
"""

from __future__ import annotations

import os
from typing import Iterator

from headstart.sdk import Item, ReaderOptions, SchemaError

from ._common import display_path, new_stats


class NpySource:
    """An opened ``.npy`` file (memory-mapped, read-only)."""

    modality = "numeric"
    has_labels = False

    def __init__(self, path: str, options: ReaderOptions) -> None:
        import numpy as np

        self.path, self.options = path, options
        self.name = display_path(path)
        self.stats = new_stats()
        try:
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise SchemaError(f"{self.name} is not a plain numeric .npy array: {exc}",
                              hint="save a numeric array with numpy.save (object arrays need pickle)") from None
        if self.array.ndim < 2 or self.array.dtype.kind not in "biuf":
            raise SchemaError(f"{self.name} holds a {self.array.ndim}-D {self.array.dtype} array; need a numeric "
                              "array with one item per row (at least 2-D)",
                              hint="reshape to (n_items, ...) with a bool, integer or float dtype")
        self.shape = tuple(self.array.shape[1:])

    def __iter__(self) -> Iterator[Item]:
        return self._items(0, int(self.array.shape[0]))

    def splits(self, rows: int) -> list[dict[str, int]]:
        """Row ranges of ``rows`` rows each, for readers in other processes (:meth:`read_split`)."""
        n = int(self.array.shape[0])
        return [{"start": i, "stop": min(i + rows, n)} for i in range(0, n, rows)]

    def read_split(self, split: dict[str, int]) -> Iterator[Item]:
        return self._items(split["start"], split["stop"])

    def _items(self, start: int, stop: int) -> Iterator[Item]:
        import numpy as np

        self.stats = stats = new_stats()
        for n in range(start, stop):
            yield Item.make(f"{self.name}:row {n + 1}", np.array(self.array[n]), "numeric")
            stats["items"] += 1

    def estimate_count(self) -> int | None:
        return int(self.array.shape[0])


def open_npy(source: str, options: ReaderOptions) -> NpySource:
    return NpySource(os.fspath(source), options)
