"""The backbone fingerprint: one hash of everything that changes the output vectors.

It covers the bytes of the weight files (and tokenizer), the preprocessing, pooling,
normalisation, output dim, precision, ONNX opset, the export recipe, onnxruntime
major.minor and, for statically quantised exports, the calibration data. Weight file
hashes are cached by (path, size, mtime) under ``<home>/exports/.weights-sha256.json``
so a cache hit does not re-read large files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ..store.atomic import sha256_file, write_json_atomic

#: Bump when the export code changes the graph it writes.
RECIPE = "headstart-export-2"  # 2: static int8 folds BatchNorm into Conv before calibrating
OPSET = 17
PRECISIONS = ("fp32", "fp16", "int8")
_HASH_CACHE = ".weights-sha256.json"


def onnxruntime_version() -> str:
    """The installed onnxruntime's major.minor, read from package metadata (no import)."""
    from importlib import metadata

    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return ".".join(metadata.version(dist).split(".")[:2])
        except metadata.PackageNotFoundError:
            continue
    return "none"


def safe_dirname(name: str) -> str:
    """A backbone name as a single safe path component (``hf:org/model`` -> ``hf_org_model``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "backbone"
    if cleaned != name:
        cleaned = f"{cleaned[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return cleaned


def file_digests(paths: list[str | os.PathLike[str]], exports_dir: Path) -> list[str]:
    """sha256 of each file, cached by absolute path, size and mtime."""
    cache_path = exports_dir / _HASH_CACHE
    try:
        cache: dict[str, str] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    digests, changed = [], False
    for p in paths:
        path = Path(p).resolve()
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            digest, changed = sha256_file(path), True
            cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
            cache[key] = digest
        digests.append(digest)
    if changed:
        try:
            write_json_atomic(cache_path, cache)
        except OSError:
            pass  # a read-only cache only costs re-hashing next time
    return digests


def tokenizer_file(tokenizer: str) -> Path:
    """The ``tokenizer.json`` a text preprocessing names (a file or a folder holding one)."""
    path = Path(tokenizer)
    return path / "tokenizer.json" if path.is_dir() else path


def fingerprint_key(spec: Any, precision: str, exports_dir: Path, calibration: str | None = None) -> dict[str, Any]:
    """The JSON-able data the fingerprint hashes (stored in the manifest as ``key``)."""
    identity = spec.identity()
    files = [*spec.weights]
    if spec.onnx_file:
        from .safety import external_data_files

        model = Path(spec.onnx_file)
        files += [str(model), *(str(model.parent / f) for f in external_data_files(model))]
    if spec.modality == "text":
        # hash the tokenizer's content, not where it happens to be installed
        identity["preprocessing"] = {**identity["preprocessing"], "tokenizer": None}
        files.append(str(tokenizer_file(spec.preprocessing.tokenizer)))
    if spec.modality == "numeric":  # the vocabulary's content, not its place; no key without one (as before)
        vocabulary = identity["preprocessing"].pop("vocabulary", None)
        if vocabulary is not None:
            identity["preprocessing"]["vocabulary"] = "file"
            files.append(str(vocabulary))
    key = {
        "recipe": RECIPE,
        "identity": identity,
        "files": sorted(set(file_digests(files, exports_dir))),
        "precision": precision,
        "opset": OPSET,
        "onnxruntime": onnxruntime_version(),
        "calibration": calibration,
    }
    if precision == "int8":  # int8 only, so the other fingerprints stay: graphs from before 7-bit weights not reused
        from .quantize import REDUCE_RANGE

        key["int8_weights"] = "7-bit" if REDUCE_RANGE else "8-bit"
    if precision == "int8" and spec.int8 != type(spec.int8)():  # only then: other fingerprints stay as they were
        from dataclasses import asdict

        key["int8"] = asdict(spec.int8)
    return key


def fingerprint_of(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def calibration_digest(items: Iterable[Any]) -> str:
    """A hash of the calibration items (statically quantised exports depend on them)."""
    from ..embed.items import content_key

    digest = hashlib.sha256()
    for item in items:
        digest.update(content_key(item).encode())
    return digest.hexdigest()[:24]
