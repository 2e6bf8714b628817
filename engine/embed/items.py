"""Items and readers: the contract between source readers (plugins) and the pipeline.

An item's identity is its *content key*: the sha256 of its raw bytes (the image
file's bytes, the UTF-8 text, or a numeric array's dtype, shape and bytes), never
its path or row number. Equal content means one embedding, however many rows hold it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Protocol

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
        key = content_key(raw) if raw is not None else content_key(f"unreadable:{ref}")
        return cls(ref=ref, payload=None, key=key, modality=modality, label=label, error=reason)


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
