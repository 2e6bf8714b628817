"""The rows of an embedding result as compact columns: no Python object per row.

A :class:`RowTable` holds, per good source row (source order): the 16-byte digest of its content key
(the feature store's own key digest, so it finds the row's vector and names it in a model's
``training_keys``), its label as an int32 code into a small table of label values (-1: no label) and,
only where an output needs them, its ref (an Arrow string array). At 10M rows that is ~200 MB (digests
and codes) where lists of keys, refs and labels took ~11 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

NO_LABEL = -1
DIGEST = np.dtype("S16")


@dataclass
class RowTable:
    """Per-row columns of a result or feature set (see the module docstring)."""

    label_codes: np.ndarray  # int32, NO_LABEL where a row has none
    label_names: list[Any]  # code -> label value
    digests: np.ndarray | None = None  # S16 key digests; None: computed from ``keys`` when asked
    keys: list[str] | None = None  # explicit keys (small, caller-given sets); None: the store names them
    refs: Any = None  # a pyarrow string array or a list; None: not kept

    def __len__(self) -> int:
        return len(self.label_codes)

    @classmethod
    def from_lists(cls, keys: Sequence[str] | None, refs: Sequence[str] | None, labels: Sequence[Any] | None,
                   n: int | None = None, *, digests: bool = True) -> "RowTable":
        """A table of caller-given rows (``labels`` None: no row has one)."""
        count = len(keys) if keys is not None else (len(labels) if labels is not None else int(n or 0))
        codes, names = encode_labels(labels if labels is not None else [None] * count)
        table = cls(codes, names, keys=list(keys) if keys is not None else None,
                    refs=list(refs) if refs is not None else None)
        if digests and keys is not None:
            table.digests = key_digests(table.keys)
        return table

    def labels(self) -> list[Any]:
        """Every row's label (None: none), as a list (small sets; large ones use the codes)."""
        names = self.label_names
        return [None if c < 0 else names[c] for c in self.label_codes.tolist()]

    def label_array(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Labels of ``rows`` (default all; each must have one) as an object array of shared label values
        (8 bytes per row: no string per row)."""
        codes = self.label_codes if rows is None else self.label_codes[rows]
        names = np.empty(len(self.label_names), dtype=object)
        names[:] = self.label_names
        return names[codes]

    def take(self, rows: np.ndarray) -> "RowTable":
        rows = np.asarray(rows, dtype=np.int64)
        refs = None
        if self.refs is not None:
            refs = [self.refs[i] for i in rows] if isinstance(self.refs, list) else self.refs.take(rows)
        return RowTable(self.label_codes[rows], self.label_names,
                        digests=None if self.digests is None else self.digests[rows],
                        keys=None if self.keys is None else [self.keys[i] for i in rows], refs=refs)


class RowTableBuilder:
    """Gathers a RowTable chunk by chunk (an embedding job's good rows, in source order)."""

    def __init__(self, keep_refs: bool = True) -> None:
        self.keep_refs = keep_refs
        self._digests: list[np.ndarray] = []
        self._codes: list[np.ndarray] = []
        self._refs: list[Any] = []
        self._names: dict[Any, int] = {}

    def add(self, keys: Sequence[str], refs: Sequence[str], labels: Sequence[Any]) -> None:
        if not len(keys):
            return
        self._digests.append(key_digests(keys))
        names = self._names
        self._codes.append(np.fromiter((NO_LABEL if v is None else names.setdefault(v, len(names)) for v in labels),
                                       np.int32, len(labels)))
        if self.keep_refs:
            import pyarrow as pa

            self._refs.append(pa.array(refs, pa.large_string()))

    def build(self) -> RowTable:
        digests = np.concatenate(self._digests) if self._digests else np.empty(0, DIGEST)
        self._digests = []
        codes = np.concatenate(self._codes) if self._codes else np.empty(0, np.int32)
        self._codes = []
        refs = None
        if self.keep_refs:
            import pyarrow as pa

            refs = pa.chunked_array(self._refs, pa.large_string()).combine_chunks() if self._refs \
                else pa.array([], pa.large_string())
            self._refs = []
        return RowTable(codes, list(self._names), digests=digests, refs=refs)


def key_digests(keys: Sequence[str]) -> np.ndarray:
    """16-byte digests of content keys (the feature store's key digest, dtype ``S16``)."""
    from ..store.keyindex import digests

    return digests(keys)


def encode_labels(labels: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """(int32 codes, label values) of ``labels`` in order of first appearance; None gets NO_LABEL."""
    names: dict[Any, int] = {}
    codes = np.fromiter((NO_LABEL if v is None else names.setdefault(v, len(names)) for v in labels),
                        np.int32, len(labels))
    return codes, list(names)
