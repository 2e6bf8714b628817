"""The text fallback: a tokenizer that cannot be expressed as graph ops ships beside the bundle.

The bundle then takes the backbone's own inputs (``input_ids``, ``attention_mask`` [, ``token_type_ids``]) and
its ``tokenizer.json`` is written next to it as ``<name>.tokenizer.json``, configured as headstart tokenises
(no padding, truncation at the backbone's ``max_length``); the metadata's ``tokenizer`` entry names the file
and the pad id, and :func:`headstart.engine.bundle.loader.encode_texts` turns strings into the inputs the way
headstart's collate does (the gate runs the bundle through that same function).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def beside(out: Path) -> Path:
    """Where the tokenizer of bundle ``out`` goes: ``model.onnx`` -> ``model.tokenizer.json``."""
    return out.with_name(out.stem + ".tokenizer.json")


def configured_tokenizer(spec: Any) -> tuple[str, int]:
    """(tokenizer JSON as headstart uses it: no padding, truncation at ``max_length``; pad id)."""
    from ..backbones.preprocess import make_preprocessor

    pre = make_preprocessor(spec)
    tok = pre._tokenizer()  # the configured tokenizers.Tokenizer headstart encodes with
    return tok.to_str(), int(pre._pad_id)


def metadata(spec: Any, file: Path, pad_id: int, why: str) -> dict[str, Any]:
    p = spec.preprocessing
    return {"in_graph": False, "file": file.name, "max_length": int(p.max_length), "pad_id": pad_id,
            "inputs": list(p.inputs), "why": why}
