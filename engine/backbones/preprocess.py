"""Turn raw items into graph inputs: tokenise text, decode images, check numeric arrays.

A :class:`Preprocessor` is picklable (it holds only its spec; the tokenizer is loaded
lazily in each process), so the embedding pipeline can send it to worker processes.
``prepare_many`` never raises for one bad item: it returns an :class:`ItemError` in
that item's place. ``collate`` pads per batch, never to a fixed length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ItemError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .spec import BackboneSpec


@dataclass(frozen=True)
class TokenIds:
    """One tokenised text: int64 token ids (special tokens included) and whether it was cut."""

    ids: "np.ndarray"
    truncated: bool


def truncated(prepared: Any) -> bool:
    """Whether a prepared item was cut at the model's maximum length (text only)."""
    return isinstance(prepared, TokenIds) and prepared.truncated


class Preprocessor:
    """Base class; :func:`make_preprocessor` picks the subclass for the spec's modality."""

    def __init__(self, spec: "BackboneSpec") -> None:
        self.prep = spec.preprocessing
        self.name = spec.name

    def prepare_many(self, payloads: list[Any]) -> list[Any]:
        raise NotImplementedError

    def length(self, prepared: Any) -> int:
        """Size for length bucketing (tokens for text, steps for sequences, 0 otherwise)."""
        return 0

    def truncated(self, prepared: Any) -> bool:
        return truncated(prepared)

    def collate(self, batch: list[Any]) -> dict[str, "np.ndarray"]:
        raise NotImplementedError


class TextPreprocessor(Preprocessor):
    """``tokenizers`` batch encoding: no padding, truncation at ``max_length``.

    Empty and whitespace-only texts are embedded (they become ``[CLS] [SEP]``), never NaN.
    """

    def __init__(self, spec: "BackboneSpec") -> None:
        super().__init__(spec)
        self._tok = None
        self._pad_id = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def _tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            from .fingerprint import tokenizer_file

            path = tokenizer_file(self.prep.tokenizer)
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as exc:  # noqa: BLE001 - missing file or bad JSON
                raise ConfigError(f"backbone '{self.name}': cannot load tokenizer {path}: {exc}",
                                  hint="point the text preprocessing at a tokenizer.json (or a folder holding one)") from None
            padding = tok.padding
            self._pad_id = int(padding["pad_id"]) if padding else (tok.token_to_id("[PAD]") or 0)
            tok.no_padding()
            tok.enable_truncation(self.prep.max_length)
            self._tok = tok
        return self._tok

    def prepare_many(self, payloads: list[Any]) -> list[Any]:
        import numpy as np

        tok = self._tokenizer()
        out: list[Any] = [None] * len(payloads)
        good = []
        for i, p in enumerate(payloads):
            if isinstance(p, str):
                good.append(i)
            else:
                out[i] = ItemError(f"expected text, got {type(p).__name__}", hint="give text items as str")
        encodings = tok.encode_batch([payloads[i] for i in good], add_special_tokens=True) if good else []
        for i, enc in zip(good, encodings):
            out[i] = TokenIds(np.asarray(enc.ids, dtype=np.int64), bool(enc.overflowing))
        return out

    def length(self, prepared: TokenIds) -> int:
        return int(prepared.ids.shape[0])

    def collate(self, batch: list[TokenIds]) -> dict[str, "np.ndarray"]:
        import numpy as np

        self._tokenizer()  # sets the pad id
        width = max(t.ids.shape[0] for t in batch)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, t in enumerate(batch):
            n = t.ids.shape[0]
            ids[row, :n] = t.ids
            mask[row, :n] = 1
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return {name: arrays[name] for name in self.prep.inputs}


class ImagePreprocessor(Preprocessor):
    """Decode + resize to 8-bit pixels (:func:`headstart.engine.embed.imaging.decode_image`) per item; normalise
    per batch in ``collate``."""

    def prepare_many(self, payloads: list[Any]) -> list[Any]:
        from ..embed.imaging import decode_image

        out: list[Any] = []
        for p in payloads:
            if not isinstance(p, (bytes, bytearray, memoryview)):
                out.append(ItemError(f"expected image bytes, got {type(p).__name__}", hint="give raw file bytes"))
                continue
            try:
                out.append(decode_image(bytes(p), self.prep))
            except ItemError as exc:
                out.append(exc)
        return out

    def collate(self, batch: list["np.ndarray"]) -> dict[str, "np.ndarray"]:
        from ..embed.imaging import normalise_batch

        return {self.prep.input_name: normalise_batch(batch, self.prep)}


class NumericPreprocessor(Preprocessor):
    """Arrays as they are, checked against the declared shape and cast to the input dtype."""

    def prepare_many(self, payloads: list[Any]) -> list[Any]:
        import numpy as np

        shape = self.prep.shape
        out: list[Any] = []
        for p in payloads:
            try:
                arr = np.asarray(p, dtype=self.prep.dtype)
            except (TypeError, ValueError) as exc:
                out.append(ItemError(f"not a numeric array of {self.prep.dtype}: {exc}", hint="check the source's values"))
                continue
            if shape and (arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape))):
                out.append(ItemError(f"array shape {arr.shape} does not match the backbone's item shape "
                                     f"{tuple('*' if s is None else s for s in shape)}",
                                     hint="reshape the items or fix the backbone's numeric preprocessing"))
            elif arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                out.append(ItemError("array holds NaN or Inf", hint="clean the item's values"))
            else:
                out.append(arr)
        return out

    def length(self, prepared: "np.ndarray") -> int:
        dynamic = [i for i, s in enumerate(self.prep.shape) if s is None]
        return int(prepared.shape[dynamic[0]]) if dynamic else 0

    def collate(self, batch: list["np.ndarray"]) -> dict[str, "np.ndarray"]:
        import numpy as np

        ndim = batch[0].ndim
        full = tuple(max(a.shape[d] for a in batch) for d in range(ndim))
        out = np.full((len(batch), *full), self.prep.pad_value, dtype=self.prep.dtype)
        for row, a in enumerate(batch):
            out[(row, *(slice(0, n) for n in a.shape))] = a
        arrays = {self.prep.input_name: out}
        if self.prep.mask_name:
            axis = next((i for i, s in enumerate(self.prep.shape) if s is None), 0)
            mask = np.zeros((len(batch), full[axis] if ndim else 1), dtype=np.int64)
            for row, a in enumerate(batch):
                mask[row, : (a.shape[axis] if ndim else 1)] = 1
            arrays[self.prep.mask_name] = mask
        return arrays


def make_preprocessor(spec: "BackboneSpec") -> Preprocessor:
    """The preprocessor for ``spec``'s modality."""
    kinds = {"text": TextPreprocessor, "image": ImagePreprocessor, "numeric": NumericPreprocessor}
    return kinds[spec.preprocessing.kind](spec)
