"""What ``headstart backbones`` shows about one backbone (spec + cached exports)."""

from __future__ import annotations

from typing import Any


def describe_backbone(spec: Any, settings: Any) -> dict[str, Any]:
    info = spec.describe()
    info["exports"] = cached_exports(spec.name, settings)
    return info


def cached_exports(name: str, settings: Any) -> list[dict[str, Any]]:
    """The manifests of the cached exports of backbone ``name`` (reads JSON only)."""
    import json

    folder = settings.exports_dir / name
    found = []
    if folder.is_dir():
        for manifest in sorted(folder.glob("*/manifest.json")):
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            found.append({k: data.get(k) for k in ("fingerprint", "precision", "parity", "created")}
                         | {"path": str(manifest.parent)})
    return found
