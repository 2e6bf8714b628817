"""All feature stores under a home: list them, and collect garbage (temp files, orphans, stray dirs)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import StoreError, StoreLockedError
from .atomic import clean_temp_files
from .lock import LOCK_NAME, StoreLock, is_locked
from .manifest import read_manifest
from .repair import remove_orphans

def store_dirs(settings: Settings) -> list[Path]:
    root = settings.features_dir
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def list_stores(settings: Settings) -> list[dict[str, Any]]:
    """``info()`` of every store under ``settings.features_dir`` (a broken one gets an ``error`` entry)."""
    from .features import FeatureStore

    stores = []
    for path in store_dirs(settings):
        try:
            if read_manifest(path) is None:
                continue
            stores.append(FeatureStore.load(path).info())
        except (StoreError, OSError) as exc:
            stores.append({"path": str(path), "fingerprint": path.name, "error": str(exc)})
    return stores


def gc(settings: Settings, min_age_s: float = 60.0) -> dict[str, Any]:
    """Remove temp files, orphan shards/index files and directories without a manifest.

    Locked stores (a writer is live) are skipped entirely; a directory without a manifest
    is removed only when untouched for ``min_age_s`` (it may be a store being created).
    """
    result: dict[str, Any] = {"removed_files": 0, "removed_dirs": [], "bytes_freed": 0, "skipped_locked": []}
    for path in store_dirs(settings):
        if is_locked(path):
            result["skipped_locked"].append(str(path))
            continue
        touched = _newest_mtime(path)
        try:
            with StoreLock(path, timeout=0):
                manifest = read_manifest(path)
                if manifest is None:
                    if time.time() - touched >= min_age_s:
                        result["bytes_freed"] += _size(path)
                        shutil.rmtree(path)
                        result["removed_dirs"].append(str(path))
                    continue
                before = _size(path)
                result["removed_files"] += len(clean_temp_files(path)) + len(remove_orphans(path, manifest))
                result["bytes_freed"] += before - _size(path)
        except StoreLockedError:
            result["skipped_locked"].append(str(path))
        except StoreError as exc:
            result.setdefault("errors", []).append(f"{path}: {exc}")
    return result


def _newest_mtime(path: Path) -> float:
    """Last change of anything under ``path`` but the lock file (the directory itself when empty)."""
    times = [p.stat().st_mtime for p in path.rglob("*") if p.name != LOCK_NAME]
    return max(times) if times else path.stat().st_mtime


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
