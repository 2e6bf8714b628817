"""The store manifest: the one file a reader reads, replaced atomically and written last.

A directory without a manifest does not exist. Shards listed here are the truth; every
other file in the store directory is derived (the index) or garbage (temp files, orphans).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .atomic import write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "headstart.feature-store"
VERSION = 1


def new_manifest(fingerprint: str, dim: int, backbone: str, index_config: dict,
                 normalized: bool | None = None) -> dict[str, Any]:
    """A new store's manifest; ``normalized`` (the backbone L2-normalises) makes readers check unit norms."""
    now = time.time()
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint,
        "dim": int(dim),
        "backbone": backbone,
        "created_at": now,
        "updated_at": now,
        "generation": 0,
        "shards": [],
        "n_vectors": 0,
        "n_errors": 0,
        "index_config": index_config,
        "index": None,
        "normalized": normalized,
    }


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when there is none (the store does not exist)."""
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"feature store manifest {path} is not valid JSON ({exc})",
                         hint="restore it from a backup or delete the store directory and re-embed") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path} is not a headstart feature store manifest",
                         hint="point at a directory under <home>/features/")
    if data.get("version") != VERSION:
        raise StoreError(f"feature store {directory} has format version {data.get('version')}; "
                         f"this headstart reads version {VERSION}", hint="upgrade headstart or re-embed")
    return data


def write_manifest(directory: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Bump the generation and write ``data`` as the manifest of ``directory`` (atomic replace)."""
    data = dict(data, generation=int(data.get("generation", 0)) + 1, updated_at=time.time())
    write_json_atomic(Path(directory) / MANIFEST, data)
    return data
