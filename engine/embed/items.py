"""Items and readers: the contract between source readers (plugins) and the pipeline.

An item's identity is its *content key*: the sha256 of its raw bytes (the image
file's bytes, the UTF-8 text, or a numeric array's dtype, shape and bytes), never
its path or row number. Equal content means one embedding, however many rows hold it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol, Sequence

ItemModality = Literal["text", "image", "numeric"]


def content_key(payload: str | bytes | Any) -> str:
    """sha256 hex of an item's raw content (UTF-8 for text; dtype, shape and bytes for arrays)."""
    if isinstance(payload, str):
        data = payload.encode("utf-8", "surrogatepass")
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    else:  # a numpy array
        import numpy as np

        arr = np.ascontiguousarray(payload)
        header = f"{arr.dtype.str}|{arr.shape}|".encode()
        data = header + arr.tobytes()
    return hashlib.sha256(data).hexdigest()


def text_keys(texts: Iterable[str]) -> list[str]:
    """:func:`content_key` of each text (the same bytes), in one comprehension."""
    sha256 = hashlib.sha256
    return [sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]


def row_keys(matrix: Any) -> list[str]:
    """:func:`content_key` of each row of an array (``content_key(matrix[i])``, the same bytes), without an
    array object per row: the rows' bytes, each behind the common ``dtype|shape|`` header, hashed from one buffer."""
    import numpy as np

    arr = np.ascontiguousarray(matrix)
    n = len(arr)
    if not n:
        return []
    header = np.frombuffer(f"{arr.dtype.str}|{arr.shape[1:]}|".encode(), np.uint8)
    body = arr.reshape(n, -1).view(np.uint8).reshape(n, -1) if arr.size else np.empty((n, 0), np.uint8)
    width = len(header) + body.shape[1]
    rows = np.empty((n, width), np.uint8)
    rows[:, :len(header)] = header
    rows[:, len(header):] = body
    data = rows.tobytes()
    sha256 = hashlib.sha256
    return [sha256(data[i:i + width]).hexdigest() for i in range(0, n * width, width)]


def failed_key(ref: str, raw: bytes | None = None) -> str:
    """The key of an item a reader could not read (as :meth:`Item.failed` gives it)."""
    return content_key(raw) if raw is not None else content_key(f"unreadable:{ref}")


@dataclass(frozen=True)
class Item:
    """One input item as a reader yields it.

    ``payload`` is the text, the raw image file bytes or a numpy array; it is ``None``
    when the reader already knows the item is bad, and then ``error`` says why.
    ``ref`` says where it came from (a path, or ``file.csv:row 12``) for error messages.
    """

    ref: str
    payload: Any
    key: str
    modality: ItemModality
    label: str | None = None
    error: str | None = None

    @classmethod
    def make(cls, ref: str, payload: Any, modality: ItemModality, label: str | None = None) -> "Item":
        return cls(ref=ref, payload=payload, key=content_key(payload), modality=modality, label=label)

    @classmethod
    def failed(cls, ref: str, reason: str, modality: ItemModality, raw: bytes | None = None,
               label: str | None = None) -> "Item":
        """An item the reader could not read; keyed by its raw bytes when known, else by its ref."""
        return cls(ref=ref, payload=None, key=failed_key(ref, raw), modality=modality, label=label, error=reason)


class RowRefs(Sequence[str]):
    """``"<name>:row <n>"`` refs of consecutive rows, made on demand (a cache hit never needs its ref)."""

    def __init__(self, name: str, first: int, count: int) -> None:
        self.name, self.first, self.count = name, first, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(i)
        return f"{self.name}:row {self.first + i}"

    def __iter__(self) -> Iterator[str]:
        name = self.name
        return (f"{name}:row {r}" for r in range(self.first, self.first + self.count))


@dataclass
class ItemBatch:
    """Consecutive items of a source, column by column: what the pipeline plans with, so that rows the store
    already holds cost array operations, never a Python object each.

    ``payloads[i]`` is row ``i``'s payload (a list, or a 2-D array of numeric rows); ``errors`` maps the
    position of each row the reader could not read to why (its payload is ignored, its key is
    :func:`failed_key`). ``keys`` are the rows' content keys, exactly :func:`content_key` of each payload.
    """

    modality: ItemModality
    keys: list[str]
    payloads: Any
    refs: Sequence[str]
    labels: Sequence[str | None]
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def item(self, i: int) -> Item:
        error = self.errors.get(i)
        payload = None if error is not None else self.payloads[i]
        return Item(ref=self.refs[i], payload=payload, key=self.keys[i], modality=self.modality,
                    label=self.labels[i], error=error)

    def __iter__(self) -> Iterator[Item]:
        return (self.item(i) for i in range(len(self)))

    @classmethod
    def of(cls, items: Sequence[Item], modality: ItemModality) -> "ItemBatch":
        return cls(modality=modality, keys=[it.key for it in items], payloads=[it.payload for it in items],
                   refs=[it.ref for it in items], labels=[it.label for it in items],
                   errors={i: it.error for i, it in enumerate(items) if it.error is not None})


def item_batches(source: Any, size: int, split: Any = None) -> Iterator[ItemBatch]:
    """``source`` (or its part ``split``, see ``splits``/``read_split``) in batches of at most ``size`` items:
    the reader's own ``batches(size)`` / ``read_split_batches(split, size)`` when it has them (keys of a whole
    batch at once), else its items grouped."""
    if split is None and hasattr(source, "batches"):
        yield from source.batches(size)
        return
    if split is not None and hasattr(source, "read_split_batches"):
        yield from source.read_split_batches(split, size)
        return
    import itertools

    iterator = iter(source) if split is None else source.read_split(split)
    while chunk := list(itertools.islice(iterator, size)):
        yield ItemBatch.of(chunk, chunk[0].modality)


@dataclass(frozen=True)
class ReaderOptions:
    """Options every reader understands (readers ignore those that do not apply).

    ``reader`` forces a reader by name (else one is chosen by path); ``labelled=False`` ignores labels
    (a named or default label column is still never taken for the input column).
    """

    text_column: str | None = None
    label_column: str | None = None
    encoding_errors: Literal["strict", "replace"] = "strict"
    labelled: bool | None = None  # None: labels if the source has them
    follow_symlinks: bool = True
    reader: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    events: Any = None  # a headstart.engine.sequences.options.EventOptions: read the table as event sequences


class Source(Protocol):
    """An opened source. Opening validates its schema (columns, label column) eagerly."""

    modality: ItemModality
    has_labels: bool

    def __iter__(self) -> Iterator[Item]: ...

    def estimate_count(self) -> int | None: ...


@dataclass(frozen=True)
class ReaderSpec:
    """A reader plugin's registration: which sources it claims and how it opens them."""

    name: str
    open: Callable[[str, ReaderOptions], Source] = field(compare=False, repr=False)
    description: str = ""
    extensions: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    can_read: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    priority: int = 0
    aliases: tuple[str, ...] = ()

    def claims(self, source: str) -> bool:
        if any(source.startswith(p) for p in self.prefixes):
            return True
        lowered = source.lower()
        if any(lowered.endswith(ext) for ext in self.extensions):
            return True
        return bool(self.can_read and self.can_read(source))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "extensions": list(self.extensions), "prefixes": list(self.prefixes)}
